"""What every ``consul-results`` command shares: the Consul CLI's connection flags, how the
backend is found (``-A/--app`` or ``--backend-url``), exit codes, and one-line errors.

Connection flags are added to each command by :func:`consul_command`, so they are written after
the command as with the Consul CLI (``consul-results ls --prefix myapp --http-addr ...``).
"""

from __future__ import annotations

import functools
import inspect
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ..backend import ConsulBackend

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 69
EXIT_TIMEOUT = 75
EXIT_PERMISSION = 77
PANEL = "Connection"


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print one error line on stderr and return the Exit to raise."""
    typer.echo(f"consul-results: {message}", err=True)
    return typer.Exit(code)


@dataclass
class Connection:
    """Where the results are: the backend's URL and the flags that override it."""

    app: str | None = None
    backend_url: str | None = None
    prefix: str | None = None
    http_addr: str | None = None
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    tls_server_name: str | None = None
    datacenter: str | None = None
    stale: bool = False
    consistent: bool = False

    def open_backend(self) -> ConsulBackend:
        """Our backend for the app's (or the URL's) results, with the flags applied on top."""
        from ..backend import ConsulBackend

        if self.stale and self.consistent:
            raise fail("--stale and --consistent exclude each other: choose one", EXIT_USAGE)
        app, url = self._celery_app()
        explicit = {
            "address": self.http_addr,
            "prefix": self.prefix,
            "token": self.token,
            "token_file": self.token_file,
            "ca_file": self.ca_file,
            "client_cert": self.client_cert,
            "client_key": self.client_key,
            "tls_server_name": self.tls_server_name,
            "datacenter": self.datacenter,
            "consistency": "stale" if self.stale else "consistent" if self.consistent else None,
        }
        for name, value in explicit.items():
            if value is not None:
                app.conf[f"consulresults_{name}"] = value
        return ConsulBackend(app=app, url=url)

    def _celery_app(self):
        from celery import Celery

        if self.app:
            from celery.app.utils import find_app

            try:
                app = find_app(self.app)
            except Exception as exc:  # import errors of the user's module, with their reason
                raise fail(f"cannot load the Celery app {self.app!r}: {exc}", EXIT_USAGE) from None
            url = self.backend_url or app.conf.result_backend or "consulresults://"
            return app, _strip_class_path(url)
        app = Celery("consul-results", set_as_current=False)
        app.conf.result_accept_content = ["json", "msgpack", "yaml"]
        return app, _strip_class_path(self.backend_url or "consulresults://")


def _strip_class_path(url: str) -> str:
    """``consulresults.backend:ConsulBackend+consul://h/p`` → ``consul://h/p``."""
    scheme, sep, rest = url.partition("://")
    return url if "+" not in scheme else scheme.split("+", 1)[1] + sep + rest


_COMMON = {
    "app": Annotated[
        str | None,
        typer.Option(
            "-A",
            "--app",
            metavar="MODULE",
            rich_help_panel=PANEL,
            help="Celery app whose result_backend, prefix and serializer to use.",
        ),
    ],
    "backend_url": Annotated[
        str | None,
        typer.Option(
            "--backend-url",
            metavar="URL",
            rich_help_panel=PANEL,
            help="Result backend URL, e.g. consulresults://127.0.0.1:8500/myapp.",
        ),
    ],
    "prefix": Annotated[
        str | None,
        typer.Option(
            "--prefix",
            metavar="PREFIX",
            rich_help_panel=PANEL,
            help="KV prefix of the results (overrides the URL's path).",
        ),
    ],
    "http_addr": Annotated[
        str | None,
        typer.Option(
            "--http-addr",
            metavar="ADDR",
            rich_help_panel=PANEL,
            help="Consul address, as CONSUL_HTTP_ADDR: host:port or http(s)://host:port.",
        ),
    ],
    "token": Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            rich_help_panel=PANEL,
            show_default=False,
            help="ACL token (prefer --token-file or CONSUL_HTTP_TOKEN_FILE: flags show in ps).",
        ),
    ],
    "token_file": Annotated[
        str | None,
        typer.Option(
            "--token-file",
            metavar="FILE",
            rich_help_panel=PANEL,
            help="File holding the ACL token.",
        ),
    ],
    "ca_file": Annotated[
        str | None,
        typer.Option(
            "--ca-file", metavar="FILE", rich_help_panel=PANEL, help="CA to verify Consul's TLS."
        ),
    ],
    "client_cert": Annotated[
        str | None,
        typer.Option(
            "--client-cert", metavar="FILE", rich_help_panel=PANEL, help="TLS client certificate."
        ),
    ],
    "client_key": Annotated[
        str | None,
        typer.Option("--client-key", metavar="FILE", rich_help_panel=PANEL, help="TLS client key."),
    ],
    "datacenter": Annotated[
        str | None,
        typer.Option(
            "--datacenter", metavar="DC", rich_help_panel=PANEL, help="Datacenter to query."
        ),
    ],
    "tls_server_name": Annotated[
        str | None,
        typer.Option(
            "--tls-server-name",
            metavar="NAME",
            rich_help_panel=PANEL,
            help="Name to expect in Consul's certificate (and to send as SNI).",
        ),
    ],
    "stale": Annotated[
        bool,
        typer.Option("--stale", rich_help_panel=PANEL, help="Allow stale reads (any server)."),
    ],
    "consistent": Annotated[
        bool,
        typer.Option(
            "--consistent", rich_help_panel=PANEL, help="Consistent reads (leader checks quorum)."
        ),
    ],
}
assert set(_COMMON) == {f.name for f in fields(Connection)}


def consul_command(fn: Callable) -> Callable:
    """Add the shared connection flags to a command taking ``conn: Connection``, and turn
    Consul, network and configuration failures into one line and a documented exit code."""
    signature = inspect.signature(fn, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "conn"]
    defaults = {f.name: f.default for f in fields(Connection)}
    extra = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=defaults[name], annotation=annotation
        )
        for name, annotation in _COMMON.items()
    ]

    @functools.wraps(fn)
    def wrapper(**kwargs):
        conn = Connection(**{name: kwargs.pop(name) for name in _COMMON})
        with consul_errors(conn):
            return fn(conn=conn, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + extra)
    wrapper.__annotations__ = {}
    return wrapper


@contextmanager
def consul_errors(conn: Connection) -> Iterator[None]:
    """Turn failures into one line that says what failed, why and what to do; never the token."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        described = describe_error(exc, conn.http_addr or "the configured address")
        if described is None:
            raise
        raise fail(*described) from None


def describe_error(exc: BaseException, where: str) -> tuple[str, int] | None:
    """(one-line message, exit status) for configuration, network, TLS and Consul failures."""
    import consul.base
    import requests
    from celery.exceptions import ImproperlyConfigured

    from ..settings import SettingsError

    if isinstance(exc, (SettingsError, ImproperlyConfigured)):
        return str(exc), EXIT_USAGE
    if isinstance(exc, requests.exceptions.SSLError):
        return (
            f"TLS failed talking to Consul at {where}: {_reason(exc)} (check --ca-file, "
            "--client-cert, --client-key, --tls-server-name)",
            EXIT_UNAVAILABLE,
        )
    if isinstance(exc, requests.ConnectionError):
        address, reason = _address(exc) or where, _reason(exc)
        hint = "set --http-addr or CONSUL_HTTP_ADDR"
        if reason == "closed without an answer" and address.startswith("https"):
            hint = "a Consul that requires TLS client certificates does this: --client-cert"
        return f"cannot reach Consul at {address}: {reason} ({hint})", EXIT_UNAVAILABLE
    if isinstance(exc, requests.Timeout):  # the transport's message names agent and request
        return _first_line(exc), EXIT_UNAVAILABLE
    if isinstance(exc, consul.base.ACLPermissionDenied):
        return (
            f"permission denied by Consul: {_first_line(exc)} (check --token, --token-file "
            "or CONSUL_HTTP_TOKEN)",
            EXIT_PERMISSION,
        )
    if isinstance(exc, consul.base.ConsulException):
        text = _first_line(exc)
        unavailable = text[:1] in ("4", "5") and text[:3] != "400"
        return f"Consul answered: {text}", EXIT_UNAVAILABLE if unavailable else EXIT_ERROR
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _reason(exc: BaseException) -> str:
    text = str(exc).lower()
    for known, reason in (
        ("connection refused", "connection refused"),
        ("name or service not known", "name or service not known"),
        ("timed out", "timed out"),
        ("certificate verify failed", "certificate verify failed"),
        ("certificate required", "Consul requires a client certificate"),
        ("no route to host", "no route to host"),
        ("connection reset", "connection reset"),
        ("closed connection without response", "closed without an answer"),
    ):
        if known in text:
            return reason
    return type(exc).__name__


def _address(exc: BaseException) -> str | None:
    request = getattr(exc, "request", None)
    if request is None or not getattr(request, "url", None):
        return None
    match = re.match(r"(https?://[^/]+)", request.url)
    return match.group(1) if match else None


_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, option: str) -> float:
    """``7d``/``12h``/``30m``/``45s``/``2w`` ago, or an ISO 8601 date/time (UTC if no zone)."""
    match = _AGE.match(text.strip())
    if match:
        return time.time() - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise fail(
            f"{option}: {text!r} is not a duration like 7d, 12h, 30m or an ISO date "
            "like 2026-11-01",
            EXIT_USAGE,
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()
