"""The ``/v1/kv/`` handlers: one key, ``?recurse`` and ``?keys`` listings (filtered by ACLs),
PUT with its cas/acquire/release variants, DELETE, each in the request's namespace."""

from __future__ import annotations

from aiohttp import web

from .http_core import ApiCore, Call
from .model import Entry, Scope
from .wire import ApiError, conflicting_flags, entry_json, json_response, parse_uint64

KV_SIZE_HINT = (
    "See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
)


class KvHandlers(ApiCore):
    """KV endpoints, validating in Consul's order (``kvs_endpoint.go``)."""

    async def kv(self, call: Call) -> web.StreamResponse:
        handler = {"GET": self.kv_get, "PUT": self.kv_put, "DELETE": self.kv_delete}
        return await handler[call.request.method](call)

    async def kv_get(self, call: Call) -> web.StreamResponse:
        key, query = call.rest, call.query
        if "keys" in query:
            return await self._kv_keys(call, key, query.get("separator", query.get("seperator")))
        if "recurse" in query:
            return await self._kv_recurse(call, key)
        if not key:
            raise ApiError(400, "Missing key name")
        scope = self._scope(call)
        call.authz.require(call.authz.key_read(key), "key:read", key)

        def read() -> tuple[Entry | None, int, bool]:
            entry, index = self.store.kv_get(key, scope)
            return entry, index, entry is not None

        entry, index, _ = await self._blocking(call, read)
        headers = self._meta(index, call)
        if entry is None:
            return web.Response(status=404, headers=headers)
        if "raw" in query:
            headers.update(
                {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
            )
            return web.Response(body=entry.value or b"", headers=headers, content_type="text/plain")
        body = [entry_json(entry, self.config.enterprise)]
        return json_response(body, call.options.pretty, headers=headers)

    def _readable(self, call: Call, prefix: str, scope: Scope) -> tuple[list[Entry], int, bool]:
        entries, index = self.store.kv_list(prefix, scope)
        visible = [e for e in entries if call.authz.key_read(e.key)]
        return visible, index, len(visible) != len(entries)

    async def _kv_listing(self, call: Call, prefix: str) -> tuple[list[Entry], int, bool]:
        """The entries a ``?recurse`` or ``?keys`` read may see, as a blocking query: (entries,
        index, whether ACLs left some out)."""
        scope = self._scope(call)

        def read() -> tuple[tuple[list[Entry], bool], int, bool]:
            visible, index, filtered = self._readable(call, prefix, scope)
            return (visible, filtered), index, True

        (entries, filtered), index, _ = await self._blocking(call, read)
        return entries, index, filtered

    async def _kv_recurse(self, call: Call, prefix: str) -> web.StreamResponse:
        entries, index, filtered = await self._kv_listing(call, prefix)
        headers = self._meta(index, call, filtered)
        if not entries:
            return web.Response(status=404, headers=headers)
        body = [entry_json(e, self.config.enterprise) for e in entries]
        return json_response(body, call.options.pretty, headers=headers)

    async def _kv_keys(self, call: Call, prefix: str, separator: str | None) -> web.StreamResponse:
        entries, index, filtered = await self._kv_listing(call, prefix)
        keys: list[str] = []
        for entry in entries:
            key = entry.key
            if separator:
                cut = key.find(separator, len(prefix))
                if cut >= 0:
                    key = key[: cut + len(separator)]
            if not keys or keys[-1] != key:
                keys.append(key)
        headers = self._meta(index, call, filtered)
        if not keys and prefix:
            return web.Response(status=404, headers=headers)
        return json_response(keys, call.options.pretty, headers=headers)

    async def kv_put(self, call: Call) -> web.StreamResponse:
        key, query = call.rest, call.query
        scope = self._scope(call)
        if not key:
            raise ApiError(400, "Missing key name")
        if sum(flag in query for flag in ("cas", "acquire", "release")) > 1:
            raise conflicting_flags(query)
        flags = parse_uint64(query["flags"]) if "flags" in query else 0
        cas = parse_uint64(query["cas"]) if "cas" in query else None
        limit = self.config.kv_max_value_size
        body = await self._read_body(
            call.request,
            limit,
            lambda n: f"Request body({n} bytes) too large, max size: {limit} bytes. {KV_SIZE_HINT}",
            f"Request body too large, max size: {limit} bytes. {KV_SIZE_HINT}",
        )
        call.authz.require(call.authz.key_write(key), "key:write", key)
        acquire, release = query.get("acquire"), query.get("release")
        ok = self.store.kv_put(key, body, flags, cas, acquire, release, scope)
        return json_response(ok)

    async def kv_delete(self, call: Call) -> web.StreamResponse:
        key, query = call.rest, call.query
        scope = self._scope(call)
        recurse = "recurse" in query
        if not key and not recurse:
            raise ApiError(400, "Missing key name")
        if recurse and "cas" in query:
            raise conflicting_flags(query)
        cas = parse_uint64(query["cas"]) if "cas" in query else None
        if recurse:
            call.authz.require(call.authz.key_write_prefix(key), "key:write", key)
        else:
            call.authz.require(call.authz.key_write(key), "key:write", key)
        return json_response(self.store.kv_delete(key, recurse=recurse, cas=cas, scope=scope))
