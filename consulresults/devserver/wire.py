"""How Consul looks on the wire: JSON encoding, entry/session bodies, query options, errors.

Kept apart from the handlers so that every handler renders the same way, and so the details that
clients trip over (Go's JSON escaping, exact uint64 flags, ``Session`` omitted when empty, canonical
header casing, plain-text error bodies) are written once.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

from aiohttp import web

from .durations import DurationError, parse_go_duration
from .model import DEFAULT_SCOPE, Entry, Scope, Session, StoreError

TEXT = "text/plain; charset=utf-8"
MAX_UINT64 = 2**64 - 1


class ApiError(StoreError):
    """An HTTP-level error (bad input, size, method...) with Consul's status and text."""


def go_json(data: object, pretty: bool = False) -> bytes:
    """Encode like Go's encoding/json: compact, non-ASCII kept, ``<>&`` and U+2028/9 escaped."""
    if pretty:
        text = json.dumps(data, ensure_ascii=False, indent=4) + "\n"
    else:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode("utf-8")


def json_response(
    data: object, pretty: bool = False, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=go_json(data, pretty), status=status, headers=headers, content_type="application/json"
    )


def text_response(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    """Consul writes errors as plain text; Go sniffs them as text/plain; charset=utf-8."""
    response = web.Response(body=text.encode("utf-8"), status=status, headers=headers)
    if text:
        response.headers["Content-Type"] = TEXT
    return response


def entry_json(entry: Entry, enterprise: bool = False) -> dict[str, Any]:
    """A KV entry in Consul's field order; Value is std base64 or null; Session only when held;
    Enterprise adds the entry's Namespace and Partition."""
    data: dict[str, Any] = {
        "LockIndex": entry.lock_index,
        "Key": entry.key,
        "Flags": entry.flags,
        "Value": base64.b64encode(entry.value).decode("ascii") if entry.value else None,
    }
    if entry.session:
        data["Session"] = entry.session
    if enterprise:
        data.update(_scope_json(entry.scope))
    data["CreateIndex"] = entry.create_index
    data["ModifyIndex"] = entry.modify_index
    return data


def session_json(session: Session, enterprise: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ID": session.id,
        "Name": session.name,
        "Node": session.node,
        "LockDelay": session.lock_delay_ns,
        "Behavior": session.behavior,
        "TTL": session.ttl,
        "NodeChecks": session.node_checks,
        "ServiceChecks": session.service_checks,
    }
    if enterprise:
        data.update(_scope_json(session.scope))
    if session.checks:
        data["Checks"] = session.checks
    data["CreateIndex"] = session.create_index
    data["ModifyIndex"] = session.modify_index
    return data


def _scope_json(scope: Scope) -> dict[str, str]:
    return {"Namespace": scope.namespace, "Partition": scope.partition}


def parse_uint64(text: str) -> int:
    """Go's strconv.ParseUint, with its error text (Consul answers it as a 500)."""
    if not text.isdigit() or not text.isascii():
        raise StoreError(500, f'strconv.ParseUint: parsing "{text}": invalid syntax')
    value = int(text)
    if value > MAX_UINT64:
        raise StoreError(500, f'strconv.ParseUint: parsing "{text}": value out of range')
    return value


@dataclass
class QueryOptions:
    """The options every endpoint parses (Consul's ``parse()``), validated up front."""

    index: int = 0
    wait_ns: int = 0
    pretty: bool = False


def parse_query_options(query: Mapping[str, str], datacenter: str) -> QueryOptions:
    """Validate dc, consistency flags, ``wait`` and ``index`` as Consul's ``parse()`` does
    (namespaces and partitions are the endpoint's to parse: :func:`parse_scope`)."""
    if "stale" in query and "consistent" in query:
        raise ApiError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
    if "max_stale" in query:
        _duration_or(query["max_stale"], f'Invalid max_stale value "{query["max_stale"]}"')
    wait_ns = _duration_or(query["wait"], "Invalid wait time") if "wait" in query else 0
    index = 0
    if "index" in query:
        try:
            index = parse_uint64(query["index"])
        except StoreError:
            raise ApiError(400, "Invalid index") from None
    dc = query.get("dc", "")
    if dc and dc != datacenter:
        raise StoreError(500, "No path to datacenter")
    return QueryOptions(index=index, wait_ns=wait_ns, pretty="pretty" in query)


# Consul CE's parseEntMeta (agent/http_ce.go): header, then query, namespace before partition
_ENTERPRISE = (
    ("X-Consul-Namespace", "ns", "Namespaces"),
    ("X-Consul-Partition", "partition", "Partitions"),
)


def parse_scope(request: web.Request, enterprise: bool) -> Scope:
    """The namespace and partition a KV or session request names (``ns``/``partition`` in the
    query, else the ``X-Consul-Namespace``/``X-Consul-Partition`` header; ``default`` when
    neither). Consul CE refuses any non-empty one, ``default`` included, with a 400."""
    named = []
    for header, param, feature in _ENTERPRISE:
        from_header = request.headers.get(header, "")
        from_query = request.query.get(param, "")
        if not enterprise and (from_header or from_query):
            where = f'header: "{header}"' if from_header else f'query parameter: "{param}"'
            raise ApiError(400, f"Invalid {where} - {feature} are a Consul Enterprise feature")
        named.append(from_query or from_header or "default")
    if not enterprise:
        return DEFAULT_SCOPE
    return Scope(partition=named[1], namespace=named[0])


def _duration_or(text: str, message: str) -> int:
    try:
        return parse_go_duration(text)
    except DurationError:
        raise ApiError(400, message) from None


def request_secret(request: web.Request) -> str | None:
    """The request's ACL secret: ``?token=``, then X-Consul-Token, then a Bearer token."""
    token = request.query.get("token")
    if token:
        return token
    token = request.headers.get("X-Consul-Token")
    if token:
        return token
    scheme, _, rest = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and rest.split():
        return rest.split()[0]
    return None


def conflicting_flags(query: Mapping[str, str]) -> ApiError:
    """Consul echoes the query re-encoded with sorted keys, as Go's url.Values.Encode does."""
    items = sorted(query.items(), key=lambda kv: kv[0])
    return ApiError(400, "Conflicting flags: " + urlencode(items, quote_via=quote_plus))


def decode_base64(text: str) -> bytes:
    """Standard base64 with padding, failing with Go's message."""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
        bad = next((i for i, c in enumerate(text) if c not in alphabet), len(text) // 4 * 4)
        raise ApiError(
            400, f"Failed to parse body: illegal base64 data at input byte {bad}"
        ) from None
