"""A Consul-compatible dev server: the HTTP API subset a Celery result backend and its ops CLI
use (KV, sessions, txn, blocking queries, ACLs, status, agent/self), with Consul's semantics.

Single node, in memory unless given a data directory, for development and tests only. It imports
nothing from the rest of :mod:`consulresults`.
"""

from .acl import AclConfig, AclRuleError
from .faults import FaultInjector, FaultRule
from .options import (
    DevServerOptions,
    ListenError,
    OptionError,
    announce_listening,
    build_server,
    run,
)
from .server import DevServer, DevServerProcess

__all__ = [
    "AclConfig",
    "AclRuleError",
    "DevServer",
    "DevServerOptions",
    "DevServerProcess",
    "FaultInjector",
    "FaultRule",
    "ListenError",
    "OptionError",
    "announce_listening",
    "build_server",
    "run",
]
