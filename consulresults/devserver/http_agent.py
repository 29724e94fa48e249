"""The status and agent endpoints: the leader and peers (no ACL) and ``/v1/agent/self``
(``agent:read`` on the node), as a single-node cluster that is its own leader."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from .http_core import ApiCore, Call
from .wire import json_response


class AgentHandlers(ApiCore):
    """Status and agent endpoints; none of them parses ``ns`` or ``partition``."""

    async def status_leader(self, call: Call) -> web.StreamResponse:
        return json_response(self.config.leader_addr, call.options.pretty)

    async def status_peers(self, call: Call) -> web.StreamResponse:
        return json_response([self.config.leader_addr], call.options.pretty)

    async def agent_self(self, call: Call) -> web.StreamResponse:
        node = self.config.node_name
        call.authz.require(call.authz.agent_read(node), "agent:read", node)
        return json_response(self._agent_self_body(), call.options.pretty)

    def _agent_self_body(self) -> dict[str, Any]:
        cfg = self.config
        host, _, port = cfg.leader_addr.rpartition(":")
        return {
            "Config": {
                "Datacenter": cfg.datacenter,
                "PrimaryDatacenter": cfg.datacenter,
                "NodeName": cfg.node_name,
                "NodeID": cfg.node_id,
                **({"Partition": "default"} if cfg.enterprise else {}),
                "Revision": "consul-results",
                "Server": True,
                "Version": cfg.version,
                "BuildDate": datetime(2025, 10, 1, tzinfo=timezone.utc).isoformat(),
            },
            "DebugConfig": {
                "Datacenter": cfg.datacenter,
                "NodeName": cfg.node_name,
                "ACLsEnabled": cfg.acl.enabled,
                "ACLResolverSettings": {"ACLDefaultPolicy": cfg.acl.default_policy},
                "SessionTTLMin": f"{self.store.session_ttl_min_ns / 1e9:g}s",
                "HTTPMaxConnsPerClient": self.connections.limit,
            },
            "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
            "Member": {
                "Name": cfg.node_name,
                "Addr": host,
                "Port": 8301,
                "Tags": {
                    "dc": cfg.datacenter,
                    "role": "consul",
                    "port": port,
                    "build": cfg.version,
                },
                "Status": 1,
                "ProtocolMin": 1,
                "ProtocolMax": 5,
                "ProtocolCur": 2,
                "DelegateMin": 2,
                "DelegateMax": 5,
                "DelegateCur": 4,
            },
            "Stats": {
                "consul": {
                    "leader": "true",
                    "leader_addr": cfg.leader_addr,
                    "server": "true",
                    "bootstrap": "true",
                    "known_datacenters": "1",
                },
                "agent": {"check_monitors": "0", "services": "0", "checks": "0"},
            },
            "Meta": {"consul-network-segment": ""},
        }
