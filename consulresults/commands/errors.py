"""Exit codes and one-line errors: every failure a command meets is turned here into one line
on stderr that says what failed, why and what to do (never the token), and a documented exit
status."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CANNOT_TELL = 4  # --orphaned: no worker answered, so orphans cannot be told apart
EXIT_PARTIAL = 5  # stats, purge: the token's ACLs hid results from the listing (--partial-ok)
EXIT_UNAVAILABLE = 69
EXIT_TIMEOUT = 75
EXIT_PERMISSION = 77


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print one error line on stderr and return the Exit to raise."""
    typer.echo(f"consul-results: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def consul_errors(address: str) -> Iterator[None]:
    """Turn configuration, network, TLS and Consul failures into one line and an exit code."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        described = describe_error(exc, address)
        if described is None:
            raise
        raise fail(*described) from None


def describe_error(exc: BaseException, where: str) -> tuple[str, int] | None:
    """(one-line message, exit status) for configuration, network, TLS and Consul failures;
    None for anything else (a bug: let it show)."""
    from ..connection import (
        ConsulError,
        ConsulTimeout,
        ConsulTLSError,
        ConsulUnreachable,
        PermissionDenied,
    )
    from ..exceptions import BrokerUnavailable, CannotTell
    from ..settings import SettingsError

    if isinstance(exc, SettingsError) or _improperly_configured(exc):
        return str(exc), EXIT_USAGE
    if isinstance(exc, CannotTell):
        return str(exc), EXIT_CANNOT_TELL
    if isinstance(exc, BrokerUnavailable):
        return str(exc), EXIT_UNAVAILABLE
    if isinstance(exc, ConsulTLSError):
        return (
            f"TLS failed talking to Consul at {where}: {exc.reason} (check --ca-file, "
            "--client-cert, --client-key, --tls-server-name)",
            EXIT_UNAVAILABLE,
        )
    if isinstance(exc, ConsulUnreachable):
        hint = "set --http-addr or CONSUL_HTTP_ADDR"
        if exc.reason == "closed without an answer" and exc.address.startswith("https"):
            hint = "a Consul that requires TLS client certificates does this: --client-cert"
        return f"cannot reach Consul at {exc.address}: {exc.reason} ({hint})", EXIT_UNAVAILABLE
    if isinstance(exc, ConsulTimeout):  # the transport's message names agent and request
        return _first_line(exc), EXIT_UNAVAILABLE
    if isinstance(exc, PermissionDenied):
        return (
            f"permission denied by Consul: {_first_line(exc)} (check --token, --token-file "
            "or CONSUL_HTTP_TOKEN)",
            EXIT_PERMISSION,
        )
    if isinstance(exc, ConsulError):
        unavailable = 400 < exc.status < 600
        return (
            f"Consul answered: {_first_line(exc)}",
            EXIT_UNAVAILABLE if unavailable else EXIT_ERROR,
        )
    return None


def _improperly_configured(exc: BaseException) -> bool:
    """Celery's configuration error (only an app given with -A can raise it, and only then is
    Celery imported)."""
    celery_exceptions = sys.modules.get("celery.exceptions")
    return celery_exceptions is not None and isinstance(exc, celery_exceptions.ImproperlyConfigured)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
