"""The dev server's own ``/_dev/`` endpoints for tests and benchmarks: counters, fault rules,
tombstone reaping, node health and the connection limit (see the README). They are neither
counted nor faulted."""

from __future__ import annotations

import json

from aiohttp import web

from .faults import FaultRule
from .http_core import ApiCore
from .wire import json_response, text_response


class ControlHandlers(ApiCore):
    """Serves ``/_dev/`` when the server's control endpoints are on."""

    async def _control(self, request: web.Request, path: str) -> web.StreamResponse:
        """The dev server's own endpoints for tests and benchmarks (see the README)."""
        method = request.method
        try:
            if path == "/_dev/counters":
                if method == "DELETE":
                    self.counters.reset()
                return json_response(self.counters.snapshot())
            if path == "/_dev/faults":
                if method == "PUT":
                    self.faults.add(FaultRule(**json.loads(await request.read())))
                elif method == "DELETE":
                    self.faults.clear()
                return json_response(
                    {"rules": self.faults.rules(), "injected": self.faults.injected}
                )
            if path == "/_dev/tombstones" and method == "DELETE":
                return json_response({"reaped": self.store.reap_tombstones(max_age_s=0)})
            if path == "/_dev/node-health" and method == "PUT":
                self.store.set_node_health(request.query.get("healthy", "true") == "true")
                return json_response(self.store.node_healthy)
            if path == "/_dev/connections":
                if method == "PUT" and "limit" in request.query:
                    self.connections.limit = int(request.query["limit"])
                elif method == "DELETE":
                    self.connections.reset_stats()
                return json_response(self.connections.stats())
        except (TypeError, ValueError) as exc:
            return text_response(400, f"bad control request: {exc}")
        return text_response(404, "unknown control endpoint\n")
