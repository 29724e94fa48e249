"""pytest fixtures for a Consul to test against (registered through the ``pytest11`` entry point).

- ``consul_server``: a running Consul-compatible dev server shared by the test session (its fault
  rules are cleared after every test), or the real agent named by ``CONSUL_HTTP_ADDR``.
- ``consul_prefix``: a KV prefix unique to the test, deleted afterwards, so tests sharing a server
  (or a real agent) never see each other's keys.
- ``consul_dev_server_factory``: start dedicated dev servers with options (ACLs, short TTLs...).
- ``consul_dev_server_options``: override to change the shared server's options.

Tests that need the dev server's own features (fault injection, request counters, options) skip
with the reason when ``CONSUL_HTTP_ADDR`` points at a real agent.

pytest loads this plugin in every run of every project that installs the package, so it imports
nothing of the dev server (nor aiohttp, which only the ``server`` extra installs) until a fixture
needs it; without the extra, such a fixture fails its test with the one line saying what to
install.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from consulresults.devserver import DevServer

REAL_AGENT_SKIP = (
    "needs the consul-results dev server (fault injection, counters or server options); "
    "CONSUL_HTTP_ADDR points at a real agent"
)


@dataclass
class ExternalConsul:
    """A real agent from CONSUL_HTTP_ADDR, with the same handle shape as a dev server."""

    url: str
    token: str | None = None
    is_dev_server = False

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (443 if self.scheme == "https" else 80)  # as Consul

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def faults(self) -> NoReturn:
        pytest.skip(REAL_AGENT_SKIP)

    def counters(self) -> dict[str, int]:
        pytest.skip(REAL_AGENT_SKIP)

    def reset_counters(self) -> None:
        pytest.skip(REAL_AGENT_SKIP)


def dev_server_class() -> type[DevServer]:
    """The dev server, imported when a fixture first needs one; without aiohttp, the test fails
    with the dev server's one line (``pip install 'consul-results[server]'``)."""
    try:
        from consulresults.devserver import DevServer
    except ModuleNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    return DevServer


def external_consul() -> ExternalConsul | None:
    """The agent named by CONSUL_HTTP_ADDR (``host:port`` or a URL), if any."""
    addr = os.environ.get("CONSUL_HTTP_ADDR")
    if not addr:
        return None
    if "://" not in addr:
        ssl = os.environ.get("CONSUL_HTTP_SSL", "").lower() in ("1", "t", "true", "yes", "on")
        addr = ("https://" if ssl else "http://") + addr
    return ExternalConsul(addr.rstrip("/"), os.environ.get("CONSUL_HTTP_TOKEN"))


@pytest.fixture(scope="session")
def consul_dev_server_options() -> dict[str, Any]:
    """Keyword arguments for the shared dev server (see ``DevServer``); override to change."""
    return {}


@pytest.fixture(scope="session")
def _consul_server_session(consul_dev_server_options: dict[str, Any]) -> Iterator[object]:
    external = external_consul()
    if external is not None:
        yield external
        return
    server: Any  # given is_dev_server and token below, the attributes ExternalConsul has
    with dev_server_class()(**consul_dev_server_options) as server:
        server.is_dev_server = True
        server.token = None
        yield server


@pytest.fixture
def consul_server(_consul_server_session: Any) -> Iterator[object]:
    """The Consul to test against; fault rules set by the test are cleared afterwards."""
    yield _consul_server_session
    if getattr(_consul_server_session, "is_dev_server", False):
        _consul_server_session.faults.clear()


@pytest.fixture
def consul_prefix(consul_server: Any) -> Iterator[str]:
    """A unique ``test-…/`` KV prefix, removed (recursively) after the test."""
    prefix = f"test-{uuid.uuid4().hex[:12]}/"
    yield prefix
    import consul

    client = consul.Consul(
        host=consul_server.host,
        port=consul_server.port,
        scheme=consul_server.scheme,
        token=consul_server.token,
    )
    client.kv.delete(prefix, recurse=True)


@pytest.fixture
def consul_dev_server_factory() -> Iterator[Callable[..., object]]:
    """``start(**options)`` starts a dedicated dev server, stopped after the test."""
    if external_consul() is not None:
        pytest.skip(REAL_AGENT_SKIP)
    server_class = dev_server_class()
    servers: list[DevServer] = []

    def start(**options: Any) -> object:
        server: Any = server_class(**options).start()  # given the attributes ExternalConsul has
        server.is_dev_server = True
        server.token = None
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
