"""Go ``time.ParseDuration`` semantics, because Consul parses ``wait``, ``TTL`` and ``LockDelay``
with it and clients depend on exactly what it accepts ("10" is invalid, "0" and "1h30m" are not)."""

from __future__ import annotations

import re

_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
MAX_NS = 2**63 - 1


class DurationError(ValueError):
    """Raised with Go's own message: ``time: invalid duration "<text>"``."""


def parse_go_duration(text: str) -> int:
    """Return the duration in nanoseconds, or raise :class:`DurationError`."""
    error = DurationError(f'time: invalid duration "{text}"')
    body = text
    sign = 1
    if body[:1] in "+-" and body:
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if body == "0":
        return 0
    if not body:
        raise error
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _PART.match(body, pos)
        if not match:
            raise error
        total += float(match.group(1)) * _UNITS_NS[match.group(2)]
        pos = match.end()
    if total > MAX_NS:
        raise error
    return sign * round(total)


def format_go_duration(ns: int) -> str:
    """Format nanoseconds like Go's ``Duration.String`` for whole seconds and above ("1m30s")."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        return f"{sign}{ns / 1_000_000:g}ms" if ns >= 1_000_000 else f"{sign}{ns}ns"
    hours, rem = divmod(ns, 3600 * 1_000_000_000)
    minutes, rem = divmod(rem, 60 * 1_000_000_000)
    seconds = rem / 1_000_000_000
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{seconds:g}s"
