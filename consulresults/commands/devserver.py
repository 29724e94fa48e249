"""``consul-results dev-server``: run the Consul-compatible dev server in the foreground. The
options are parsed here; what they mean is :mod:`consulresults.devserver.options`' business."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import EXIT_USAGE, fail

Host = Annotated[str, typer.Option(metavar="HOST", help="Address to listen on.")]

Port = Annotated[
    int,
    typer.Option(metavar="PORT", min=0, max=65535, help="Port to listen on; 0 picks a free port."),
]

NodeName = Annotated[str, typer.Option(metavar="NAME", help="The node's name.")]

Datacenter = Annotated[str, typer.Option(metavar="DC", help="The datacenter's name.")]

AclDefaultPolicy = Annotated[
    str | None,
    typer.Option(metavar="POLICY", help="Enable ACLs with this default policy: allow or deny."),
]

AclManagementToken = Annotated[
    str | None,
    typer.Option(
        envvar="CONSUL_DEV_MANAGEMENT_TOKEN",
        metavar="SECRET",
        help="Enable ACLs with this management (all-powerful) token secret.",
    ),
]

AclToken = Annotated[
    list[str] | None,
    typer.Option(
        help="Enable ACLs and add a token: SECRET=RULES, RULES in Consul's JSON rule form, "
        "e.g. "
        '\'app-token={"key_prefix":{"app/":"write"},"session_prefix":{"":"write"}}\'. '
        "Repeatable.",
        metavar="SECRET=RULES",
    ),
]

AclTokensFile = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE", help="Enable ACLs and add tokens from a JSON file {SECRET: RULES, ...}."
    ),
]

SessionTtlMin = Annotated[
    str,
    typer.Option(
        metavar="DURATION", help="Shortest session TTL accepted (Consul's session_ttl_min)."
    ),
]

SessionTtlMultiplier = Annotated[
    float,
    typer.Option(
        metavar="FACTOR",
        help="Sessions are invalidated TTL x this after the last renew (Consul: 2).",
    ),
]

DataDir = Annotated[
    Path | None,
    typer.Option(
        metavar="DIR",
        help="Keep state in this directory across restarts (default: memory only).",
    ),
]

TlsCert = Annotated[
    Path | None, typer.Option(metavar="FILE", help="Serve HTTPS with this certificate.")
]

TlsKey = Annotated[Path | None, typer.Option(metavar="FILE", help="Private key of --tls-cert.")]

TlsCa = Annotated[
    Path | None,
    typer.Option(metavar="FILE", help="Require client certificates signed by this CA."),
]

KvMaxValueSize = Annotated[
    int,
    typer.Option(metavar="BYTES", help="Largest KV value in bytes (Consul's kv_max_value_size)."),
]

HttpMaxConnsPerClient = Annotated[
    int,
    typer.Option(
        metavar="N",
        min=0,
        help="Concurrent HTTP connections allowed per client IP, more are refused with a 429 "
        "(Consul's limits.http_max_conns_per_client); 0 for no limit.",
    ),
]

Enterprise = Annotated[
    bool,
    typer.Option(
        "--enterprise",
        help="Accept namespaces and partitions as Consul Enterprise does (ns/partition on KV "
        "and session calls, Namespace/Partition in txn operations; keys and sessions kept "
        "apart per namespace). Without it they are refused as Consul CE refuses them.",
    ),
]

Socket = Annotated[
    str | None,  # not a Path: it would turn unix:///path into unix:/path
    typer.Option(
        metavar="PATH",
        help="Serve HTTP on this unix socket too (a path, or unix:///path as CONSUL_HTTP_ADDR "
        "takes it); a socket file left there is replaced. Its clients share one "
        "--http-max-conns-per-client budget, as Consul's do.",
    ),
]

FaultErrorFraction = Annotated[
    float,
    typer.Option(
        metavar="FRACTION",
        help="Answer this fraction of API requests with --fault-status/--fault-body.",
    ),
]

FaultStatus = Annotated[int, typer.Option(metavar="STATUS", help="Status of injected errors.")]

FaultBody = Annotated[str, typer.Option(metavar="TEXT", help="Body of injected errors.")]

FaultLatency = Annotated[
    str | None,
    typer.Option(metavar="DURATION", help="Delay API requests by this duration (e.g. 2s)."),
]

FaultLatencyFraction = Annotated[
    float,
    typer.Option(metavar="FRACTION", help="Fraction of requests delayed by --fault-latency."),
]

FaultResetFraction = Annotated[
    float,
    typer.Option(metavar="FRACTION", help="Reset the connection of this fraction of API requests."),
]

FaultSeed = Annotated[int | None, typer.Option(metavar="SEED", help="Seed for fractional faults.")]


def dev_server(
    host: Host = "127.0.0.1",
    port: Port = 8500,
    node_name: NodeName = "consul-results-dev",
    datacenter: Datacenter = "dc1",
    acl_default_policy: AclDefaultPolicy = None,
    acl_management_token: AclManagementToken = None,
    acl_token: AclToken = None,
    acl_tokens_file: AclTokensFile = None,
    session_ttl_min: SessionTtlMin = "10s",
    session_ttl_multiplier: SessionTtlMultiplier = 2.0,
    data_dir: DataDir = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    kv_max_value_size: KvMaxValueSize = 524_288,
    http_max_conns_per_client: HttpMaxConnsPerClient = 200,
    enterprise: Enterprise = False,
    socket: Socket = None,
    fault_error_fraction: FaultErrorFraction = 0.0,
    fault_status: FaultStatus = 500,
    fault_body: FaultBody = "No cluster leader",
    fault_latency: FaultLatency = None,
    fault_latency_fraction: FaultLatencyFraction = 1.0,
    fault_reset_fraction: FaultResetFraction = 0.0,
    fault_seed: FaultSeed = None,
) -> None:
    """Run a Consul-compatible dev server (single node, for development and tests only).

    It needs the server extra: pip install 'consul-results[server]'."""
    given = dict(locals())  # first: exactly the options above
    try:
        from ..devserver import DevServerOptions, ListenError, OptionError, run
    except ModuleNotFoundError as exc:  # a plain install: its message says what to install
        raise fail(str(exc)) from None

    try:
        run(DevServerOptions(**given))
    except OptionError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except ListenError as exc:
        raise fail(str(exc)) from None
