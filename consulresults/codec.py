"""Decode stored results without Celery, for a CLI that was given no app.

Celery's backends serialize a result's meta with the app's ``result_serializer`` (json by
default, or msgpack or yaml), optionally compressed with a marker in front. Importing Celery
costs most of a CLI command's start-up, so the CLI reads those formats itself: the serializer is
told apart by the payload's first byte. Stored exceptions (``{"exc_type": ..., "exc_message":
...}``) become exception objects of that name, never an import of the module they name. Pickle
is refused: unpickling runs code, so only an app that accepts pickle (``-A``) may do it.
"""

from __future__ import annotations

import json
from typing import Any, cast

COMPRESSED_MAGIC = b"\x00celery-compressed\x00"
EXCEPTION_STATES = frozenset({"FAILURE", "RETRY", "REVOKED"})
_PICKLE = b"\x80"
_MSGPACK_MAPS = frozenset(range(0x81, 0x90)) | {0xDE, 0xDF}


class UnreadableResult(ValueError):
    """A payload this decoder will not or cannot read (pickle, garbage, another format)."""


def decode_meta(payload: bytes) -> dict[str, Any]:
    """The meta dict of a stored result, as Celery's ``decode_result`` would give it."""
    if payload.startswith(COMPRESSED_MAGIC):
        payload = _decompress(payload[len(COMPRESSED_MAGIC) :])
    meta = _loads(payload)
    if not isinstance(meta, dict) or "status" not in meta:
        raise UnreadableResult("not a Celery result (no status)")
    if meta["status"] in EXCEPTION_STATES and isinstance(meta.get("result"), dict):
        meta["result"] = stored_exception(meta["result"])
    return meta


def _loads(payload: bytes) -> Any:
    if payload.startswith(_PICKLE):
        raise UnreadableResult("pickle: only an app that accepts pickle may read it (use -A)")
    if payload[:1] and payload[0] in _MSGPACK_MAPS:
        return _module("msgpack").unpackb(payload, raw=False)
    text = payload.decode("utf-8")
    if text.lstrip().startswith("{"):
        return json.loads(text, object_hook=_kombu_json)
    return _module("yaml").safe_load(text)


def _module(name: str) -> Any:
    """msgpack and PyYAML are optional, as they are for Celery."""
    try:
        return __import__(name)
    except ImportError:
        package = "pyyaml" if name == "yaml" else name
        raise UnreadableResult(f"{name} results need the {package} package installed") from None


def _kombu_json(obj: dict[str, Any]) -> object:
    """kombu writes datetimes, UUIDs, decimals and bytes as ``{"__type__", "__value__"}``."""
    if set(obj) == {"__type__", "__value__"}:
        return obj["__value__"]
    return obj


def _decompress(payload: bytes) -> bytes:
    """``content-type NUL body``, as Celery's ``compress_payload`` writes it."""
    from kombu.compression import decompress

    content_type, _, body = payload.partition(b"\x00")
    return cast(bytes, decompress(body, content_type.decode("utf-8")))


def stored_exception(data: dict[str, Any]) -> BaseException:
    """An exception of the stored type's name with the stored arguments; the type is made
    here, not imported, so a stored result cannot make this process import anything."""
    name = str(data.get("exc_type") or "Exception").rsplit(".", 1)[-1]
    message = data.get("exc_message", "")
    args = tuple(message) if isinstance(message, (list, tuple)) else (message,)
    return cast(
        BaseException, type(name, (Exception,), {"__module__": str(data.get("exc_module"))})(*args)
    )
