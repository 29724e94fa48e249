"""How results are named in Consul's KV store: Celery's own key layout, with safe task ids.

Keys are ``<prefix>/celery-task-meta-<id>``, ``<prefix>/celery-taskset-meta-<id>`` and
``<prefix>/chord-unlock-<id>``, exactly as Celery's built-in Consul backend writes them (a chord
in flight also has keys under ``<prefix>/chord-unlock-<id>/``), so either
backend reads the other's results. Ids made of ordinary characters (every UUID, every id Celery
generates) are used verbatim; anything else is percent-encoded, so a task id can never add a path
segment, climb out of the prefix (``..``), or carry control characters into a key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

TASK_PREFIX = "celery-task-meta-"
GROUP_PREFIX = "celery-taskset-meta-"
CHORD_PREFIX = "chord-unlock-"
KINDS = {TASK_PREFIX: "task", GROUP_PREFIX: "group", CHORD_PREFIX: "chord"}
_SAFE = "-_.:@+=,~"
_DOTS = re.compile(r"\.{2,}")


def escape(name: str) -> str:
    """Percent-encode everything but ``[A-Za-z0-9-_.:@+=,~]``; runs of dots are encoded too.
    A lone surrogate (no UTF-8 for it) is encoded as Python's ``surrogatepass`` does."""
    try:
        escaped = quote(name, safe=_SAFE, encoding="utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        escaped = quote(name, safe=_SAFE, encoding="utf-8", errors="surrogatepass")
    return _DOTS.sub(lambda m: "%2E" * len(m.group()), escaped)


def unescape(name: str) -> str:
    try:
        return unquote(name, encoding="utf-8", errors="surrogatepass")
    except UnicodeDecodeError:  # bytes that are no UTF-8 (someone else's key)
        return unquote(name, encoding="utf-8", errors="surrogateescape")


def full_key(prefix: str, name: str) -> str:
    """The Consul key for a Celery key name (``celery-task-meta-<id>``) under ``prefix``."""
    return f"{prefix}/{escape(name)}" if prefix else escape(name)


@dataclass(frozen=True)
class ParsedKey:
    """A key under the prefix that names a Celery result, group or chord counter."""

    key: str
    kind: str
    id: str


def parse_key(prefix: str, key: str) -> ParsedKey | None:
    """Recognise one of our keys under ``prefix``; None for anything else (never ours to touch)."""
    head = f"{prefix}/" if prefix else ""
    if not key.startswith(head):
        return None
    name = key[len(head) :]
    if "/" in name:  # a chord's own keys live under chord-unlock-<id>/ (see chords.py)
        name, _, _ = name.partition("/")
        if not name.startswith(CHORD_PREFIX):
            return None
    for marker, kind in KINDS.items():
        if name.startswith(marker) and len(name) > len(marker):
            return ParsedKey(key, kind, unescape(name[len(marker) :]))
    return None
