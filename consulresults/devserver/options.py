"""The ``consul-results dev-server`` options as a running :class:`DevServer`.

The command only parses its options; turning them into a server (ACL tokens, data directory,
fault rules) lives here, with the dev server, so that every invalid option surfaces as one
:class:`OptionError` whose message is the single line the user sees.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .acl import AclConfig
from .durations import parse_go_duration
from .faults import FaultRule
from .server import DevServer, serve_forever


class OptionError(ValueError):
    """An option the dev server cannot run with; the message is the one line to show."""


class ListenError(Exception):
    """The server could not listen on its address; the message says why and what to do."""


@dataclass
class DevServerOptions:
    """The ``dev-server`` command's options, with its defaults (see its ``--help``)."""

    host: str = "127.0.0.1"
    port: int = 8500
    node_name: str = "consul-results-dev"
    datacenter: str = "dc1"
    acl_default_policy: str | None = None
    acl_management_token: str | None = None
    acl_token: list[str] | None = None  # "SECRET=RULES" items
    acl_tokens_file: Path | None = None
    session_ttl_min: str = "10s"
    session_ttl_multiplier: float = 2.0
    data_dir: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    kv_max_value_size: int = 524_288
    http_max_conns_per_client: int = 200
    enterprise: bool = False
    socket: str | None = None  # a path, or unix:///path
    fault_error_fraction: float = 0.0
    fault_status: int = 500
    fault_body: str = "No cluster leader"
    fault_latency: str | None = None
    fault_latency_fraction: float = 1.0
    fault_reset_fraction: float = 0.0
    fault_seed: int | None = None


def announce_listening(url: str) -> None:
    """Print the line :class:`DevServerProcess` (and users) wait for: its last word is the URL."""
    print(f"consul-results dev-server listening on {url}", flush=True)


def run(options: DevServerOptions, announce: Callable[[str], None] = announce_listening) -> None:
    """Serve in the foreground until SIGINT or SIGTERM; ``announce`` gets the URL once bound.

    Raises :class:`OptionError` for an invalid option and :class:`ListenError` when the address
    cannot be bound, so the caller only has to print the message.
    """
    server = build_server(options)
    try:
        asyncio.run(serve_forever(server, announce))
    except OSError as exc:
        reason = (os.strerror(exc.errno) if exc.errno else str(exc)).lower()
        if exc.filename:  # the unix socket
            reason = (exc.strerror or reason).lower()
            raise ListenError(
                f"cannot listen on the socket {exc.filename}: {reason} (choose another --socket)"
            ) from None
        raise ListenError(
            f"cannot listen on {options.host}:{options.port}: {reason} "
            "(choose another --port, or --port 0 for a free one)"
        ) from None


def build_server(options: DevServerOptions) -> DevServer:
    """The server ``options`` describe, not yet started; creates the data directory.

    Raises :class:`OptionError` for any option it cannot use.
    """
    _make_data_dir(options.data_dir)
    tokens = _tokens(options.acl_tokens_file, options.acl_token or [])
    try:
        server = DevServer(
            host=options.host,
            port=_port(options.port),
            node_name=options.node_name,
            datacenter=options.datacenter,
            acl=_acl(options, tokens),
            session_ttl_min=options.session_ttl_min,
            session_ttl_multiplier=options.session_ttl_multiplier,
            data_dir=options.data_dir,
            tls_cert=_str(options.tls_cert),
            tls_key=_str(options.tls_key),
            tls_ca=_str(options.tls_ca),
            kv_max_value_size=options.kv_max_value_size,
            http_max_conns_per_client=options.http_max_conns_per_client,
            enterprise=options.enterprise,
            socket=options.socket,
            fault_seed=options.fault_seed,
        )
        for rule in _fault_rules(options):
            server.faults.add(rule)
    except (ValueError, OSError) as exc:  # AclRuleError and DurationError are ValueErrors
        raise _invalid(exc) from None
    return server


def _make_data_dir(data_dir: Path | None) -> None:
    if data_dir is None:
        return
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"cannot use --data-dir {data_dir}: {exc.strerror}") from None


def _tokens(tokens_file: Path | None, items: list[str]) -> dict[str, str | dict[str, Any]]:
    """Secrets and their rules: the file's first, then the items (which win on a clash)."""
    tokens = {} if tokens_file is None else _read_tokens_file(tokens_file)
    for item in items:
        secret, sep, rules = item.partition("=")
        if not sep or not secret:
            raise OptionError("--acl-token must look like SECRET=RULES")
        tokens[secret] = rules
    return tokens


def _read_tokens_file(path: Path) -> dict[str, str | dict[str, Any]]:
    try:
        tokens = json.loads(path.read_text())
    except (ValueError, OSError) as exc:  # json.JSONDecodeError is a ValueError
        raise _invalid(exc) from None
    if not isinstance(tokens, dict):
        raise OptionError(
            f"invalid dev-server option: --acl-tokens-file {path} must hold a JSON object "
            "{SECRET: RULES, ...}"
        )
    return tokens


def _acl(options: DevServerOptions, tokens: dict[str, str | dict[str, Any]]) -> AclConfig:
    """Any ACL option turns ACLs on; the default policy then defaults to allow, like Consul."""
    return AclConfig(
        enabled=bool(options.acl_default_policy or options.acl_management_token or tokens),
        default_policy=options.acl_default_policy or "allow",
        management_token=options.acl_management_token,
        tokens=tokens,
    )


def _fault_rules(options: DevServerOptions) -> list[FaultRule]:
    """The rules the ``--fault-*`` options ask for; a zero fraction or no latency adds none."""
    rules = []
    if options.fault_error_fraction:
        rules.append(
            FaultRule(
                "error",
                fraction=options.fault_error_fraction,
                status=options.fault_status,
                body=options.fault_body,
            )
        )
    if options.fault_latency:
        seconds = parse_go_duration(options.fault_latency) / 1e9
        rules.append(FaultRule("latency", fraction=options.fault_latency_fraction, seconds=seconds))
    if options.fault_reset_fraction:
        rules.append(FaultRule("reset", fraction=options.fault_reset_fraction))
    return rules


def _port(port: int) -> int:
    """The command's parser checks the range too; a Python caller gets the same kind of error."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, not {port}")
    return port


def _invalid(exc: Exception) -> OptionError:
    return OptionError(f"invalid dev-server option: {exc}")


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
