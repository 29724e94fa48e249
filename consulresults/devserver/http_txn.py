"""The ``/v1/txn`` handler: decoding and size checks in Consul's order, ACL checks per
operation, then the store's read-only or writing transaction. Like Consul's, it parses no
``ns``/``partition`` query parameter: each KV operation names its own (Enterprise only; CE
ignores the fields, so such an operation runs in the default namespace)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .acl import Authorizer
from .http_core import ApiCore, Call
from .model import DEFAULT_SCOPE, Scope, StoreError, TxnOp, go_quote
from .wire import ApiError, decode_base64, entry_json, json_response

TXN_SIZE_HINT = "See https://www.consul.io/docs/agent/config/config-files#txn_max_req_len."
_KV_FIELDS = {
    f.lower(): f
    for f in ("Verb", "Key", "Value", "Flags", "Index", "Session", "Namespace", "Partition")
}
_TXN_KINDS = {"kv": "KV", "node": "Node", "service": "Service", "check": "Check"}
_READ_META = {
    "Index": 0,
    "LastContact": 0,
    "KnownLeader": True,
    "ConsistencyLevel": "",
    "NotModified": False,
    "Backend": 0,
}


class TxnHandlers(ApiCore):
    """The transaction endpoint (``txn_endpoint.go``)."""

    async def txn(self, call: Call) -> web.StreamResponse:
        limit = max(self.config.txn_max_req_len, self.config.kv_max_value_size)
        body = await self._read_body(
            call.request,
            limit,
            lambda n: (
                f"Request body({n} bytes) too large, max size: {limit} bytes. {TXN_SIZE_HINT}"
            ),
            f"Request body too large, max size: {limit} bytes. {TXN_SIZE_HINT}",
        )
        ops = self._decode_txn(body)
        errors = _txn_acl_errors(call.authz, ops) + self.store.txn_precheck(ops)
        if errors:
            return _txn_failure(sorted(errors))
        read_only = self.store.txn_is_read_only(ops)
        if read_only:
            results, errors = self.store.txn_read(ops)
        else:
            results, errors = self.store.txn_write(ops)
        if errors:
            return _txn_failure(errors)
        enterprise = self.config.enterprise
        visible = [{"KV": entry_json(e, enterprise)} for e in results if call.authz.key_read(e.key)]
        body_json: dict[str, Any] = {"Results": visible, "Errors": None}
        headers = None
        if read_only:
            body_json.update(_READ_META, ResultsFilteredByACLs=len(visible) != len(results))
            headers = {"X-Consul-Knownleader": "true", "X-Consul-Lastcontact": "0"}
        return json_response(body_json, call.options.pretty, headers=headers)

    def _decode_txn(self, body: bytes) -> list[TxnOp]:
        try:
            raw_ops = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"Failed to parse body: {exc}") from None
        if raw_ops is None:
            raw_ops = []
        if not isinstance(raw_ops, list) or not all(isinstance(o, dict) for o in raw_ops):
            raise ApiError(
                400, "Failed to parse body: json: cannot unmarshal into Go value of type api.TxnOps"
            )
        if len(raw_ops) > self.config.txn_max_ops:
            raise ApiError(
                413,
                f"Transaction contains too many operations "
                f"({len(raw_ops)} > {self.config.txn_max_ops})",
            )
        return [self._decode_op(raw) for raw in raw_ops]

    def _decode_op(self, raw: dict[str, Any]) -> TxnOp:
        fields = _kv_fields(raw)
        value = decode_base64(fields["Value"]) if fields.get("Value") else None
        if value is not None and len(value) > self.config.kv_max_value_size:
            raise ApiError(
                413,
                f"Value for key {go_quote(fields.get('Key') or '')} is too large "
                f"({len(value)} > {self.config.kv_max_value_size} bytes)",
            )
        return TxnOp(
            verb=fields.get("Verb") or "",
            key=fields.get("Key") or "",
            value=value,
            flags=int(fields.get("Flags") or 0),
            index=int(fields.get("Index") or 0),
            session=fields.get("Session") or "",
            scope=self._op_scope(fields),
        )

    def _op_scope(self, fields: dict[str, Any]) -> Scope:
        """Enterprise takes the operation's Namespace and Partition (``default`` when absent: the
        dev server's tokens have no namespace of their own); CE ignores both."""
        if not self.config.enterprise:
            return DEFAULT_SCOPE
        return Scope(
            partition=fields.get("Partition") or "default",
            namespace=fields.get("Namespace") or "default",
        )


def _kv_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """The KV operation's fields by canonical name; unknown fields and other kinds refused."""
    kinds = {}
    for name, value in raw.items():
        kind = _TXN_KINDS.get(name.lower())
        if kind is None:
            raise ApiError(400, f'Failed to parse body: json: unknown field "{name}"')
        if value is not None:
            kinds[kind] = value
    if list(kinds) != ["KV"]:
        raise StoreError(
            500, "the consul-results dev server supports only KV operations in transactions"
        )
    fields = {}
    for name, value in kinds["KV"].items():
        canonical = _KV_FIELDS.get(name.lower())
        if canonical is None:
            raise ApiError(400, f'Failed to parse body: json: unknown field "{name}"')
        fields[canonical] = value
    return fields


def _txn_acl_errors(authz: Authorizer, ops: list[TxnOp]) -> list[tuple[int, str]]:
    errors = []
    for i, op in enumerate(ops):
        if op.verb in ("get", "get-tree", "get-or-empty"):
            continue
        if op.verb in ("check-index", "check-session"):
            allowed, permission = authz.key_read(op.key), "key:read"
        elif op.verb == "delete-tree":
            allowed, permission = authz.key_write_prefix(op.key), "key:write"
        else:
            allowed, permission = authz.key_write(op.key), "key:write"
        if not allowed:
            errors.append((i, str(authz.denial(permission, op.key))))
    return errors


def _txn_failure(errors: list[tuple[int, str]]) -> web.Response:
    return json_response(
        {"Results": None, "Errors": [{"OpIndex": i, "What": what} for i, what in errors]},
        status=409,
    )
