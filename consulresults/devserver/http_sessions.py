"""The ``/v1/session/`` handlers: create, destroy, renew (``session:write`` on the node) and
info, list, node (filtered by ``session:read``), each in the request's namespace."""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web

from .http_core import ApiCore, Call
from .model import Session
from .wire import ApiError, json_response, session_json


class SessionHandlers(ApiCore):
    """Session endpoints (``session_endpoint.go``)."""

    async def session_create(self, call: Call) -> web.StreamResponse:
        scope = self._scope(call)
        body = await call.request.read()
        spec = {}
        if body:
            try:
                decoded = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ApiError(400, f"Request decode failed: {exc}") from None
            if not isinstance(decoded, dict):
                raise ApiError(400, "Request decode failed: expected a JSON object")
            spec = {k.lower(): v for k, v in decoded.items()}
        node = spec.get("node") or self.config.node_name
        call.authz.require(call.authz.session_write(node), "session:write", node)
        return json_response({"ID": self.store.session_create(spec, scope)}, call.options.pretty)

    def _session_id(self, call: Call) -> str:
        if not call.rest:
            raise ApiError(400, "Missing session")
        return call.rest

    async def session_destroy(self, call: Call) -> web.StreamResponse:
        scope = self._scope(call)
        session = self.store.session_get(self._session_id(call), scope)
        if session is not None:
            call.authz.require(
                call.authz.session_write(session.node), "session:write", session.node
            )
            self.store.session_destroy(session.id, scope)
        return json_response(True)

    async def session_renew(self, call: Call) -> web.StreamResponse:
        scope = self._scope(call)
        session_id = self._session_id(call)
        session = self.store.session_get(session_id, scope)
        if session is None:
            raise ApiError(404, f"Session id '{session_id}' not found")
        call.authz.require(call.authz.session_write(session.node), "session:write", session.node)
        self.store.session_renew(session.id, scope)
        return json_response([self._session_json(session)], call.options.pretty)

    def _session_json(self, session: Session) -> dict[str, object]:
        return session_json(session, self.config.enterprise)

    async def _session_read(
        self, call: Call, select: Callable[[], list[Session]]
    ) -> web.StreamResponse:
        def read() -> tuple[list[Session], int, bool]:
            sessions = select()
            return sessions, self.store.session_index, bool(sessions)

        sessions, index, _ = await self._blocking(call, read)
        visible = [s for s in sessions if call.authz.session_read(s.node)]
        headers = self._meta(index, call, len(visible) != len(sessions))
        body = [self._session_json(s) for s in visible]
        return json_response(body, call.options.pretty, headers=headers)

    async def session_info(self, call: Call) -> web.StreamResponse:
        scope = self._scope(call)
        session_id = self._session_id(call)
        return await self._session_read(
            call, lambda: [s for s in [self.store.session_get(session_id, scope)] if s]
        )

    async def session_list(self, call: Call) -> web.StreamResponse:
        scope = self._scope(call)
        return await self._session_read(call, lambda: self.store.session_list(scope=scope))

    async def session_node(self, call: Call) -> web.StreamResponse:
        scope = self._scope(call)
        if not call.rest:
            raise ApiError(400, "Missing node name")
        return await self._session_read(call, lambda: self.store.session_list(call.rest, scope))
