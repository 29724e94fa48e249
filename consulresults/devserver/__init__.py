"""A Consul-compatible dev server: the HTTP API subset a Celery result backend and its ops CLI
use (KV, sessions, txn, blocking queries, ACLs, status, agent/self), with Consul's semantics.

Single node, in memory unless given a data directory, for development and tests only. It imports
nothing from the rest of :mod:`consulresults`.

It needs aiohttp, which only the ``server`` extra installs (a Celery worker goes without it):
without it, importing this package raises a ModuleNotFoundError whose message is the one line
that says what to install, for the CLI, the pytest plugin and the demo to show as it is.
"""

try:
    import aiohttp  # noqa: F401  (first: the modules below need it)
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(
        "the dev server needs aiohttp, which is not installed: "
        "pip install 'consul-results[server]'",
        name=exc.name,
    ) from exc

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
