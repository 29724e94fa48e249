"""``consul-results dev-server``: run the Consul-compatible dev server in the foreground. The
options are parsed here; what they mean is :mod:`consulresults.devserver.options`' business."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import EXIT_USAGE, fail


def dev_server(
    host: Annotated[str, typer.Option(metavar="HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            metavar="PORT", min=0, max=65535, help="Port to listen on; 0 picks a free port."
        ),
    ] = 8500,
    node_name: Annotated[
        str, typer.Option(metavar="NAME", help="The node's name.")
    ] = "consul-results-dev",
    datacenter: Annotated[str, typer.Option(metavar="DC", help="The datacenter's name.")] = "dc1",
    acl_default_policy: Annotated[
        str | None,
        typer.Option(metavar="POLICY", help="Enable ACLs with this default policy: allow or deny."),
    ] = None,
    acl_management_token: Annotated[
        str | None,
        typer.Option(
            envvar="CONSUL_DEV_MANAGEMENT_TOKEN",
            metavar="SECRET",
            help="Enable ACLs with this management (all-powerful) token secret.",
        ),
    ] = None,
    acl_token: Annotated[
        list[str] | None,
        typer.Option(
            help="Enable ACLs and add a token: SECRET=RULES, RULES in Consul's JSON rule form, "
            "e.g. "
            '\'app-token={"key_prefix":{"app/":"write"},"session_prefix":{"":"write"}}\'. '
            "Repeatable.",
            metavar="SECRET=RULES",
        ),
    ] = None,
    acl_tokens_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="Enable ACLs and add tokens from a JSON file {SECRET: RULES, ...}."
        ),
    ] = None,
    session_ttl_min: Annotated[
        str,
        typer.Option(
            metavar="DURATION", help="Shortest session TTL accepted (Consul's session_ttl_min)."
        ),
    ] = "10s",
    session_ttl_multiplier: Annotated[
        float,
        typer.Option(
            metavar="FACTOR",
            help="Sessions are invalidated TTL x this after the last renew (Consul: 2).",
        ),
    ] = 2.0,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Keep state in this directory across restarts (default: memory only).",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Serve HTTPS with this certificate.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Private key of --tls-cert.")
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Require client certificates signed by this CA."),
    ] = None,
    kv_max_value_size: Annotated[
        int,
        typer.Option(
            metavar="BYTES", help="Largest KV value in bytes (Consul's kv_max_value_size)."
        ),
    ] = 524_288,
    fault_error_fraction: Annotated[
        float,
        typer.Option(
            metavar="FRACTION",
            help="Answer this fraction of API requests with --fault-status/--fault-body.",
        ),
    ] = 0.0,
    fault_status: Annotated[
        int, typer.Option(metavar="STATUS", help="Status of injected errors.")
    ] = 500,
    fault_body: Annotated[
        str, typer.Option(metavar="TEXT", help="Body of injected errors.")
    ] = "No cluster leader",
    fault_latency: Annotated[
        str | None,
        typer.Option(metavar="DURATION", help="Delay API requests by this duration (e.g. 2s)."),
    ] = None,
    fault_latency_fraction: Annotated[
        float,
        typer.Option(metavar="FRACTION", help="Fraction of requests delayed by --fault-latency."),
    ] = 1.0,
    fault_reset_fraction: Annotated[
        float,
        typer.Option(
            metavar="FRACTION", help="Reset the connection of this fraction of API requests."
        ),
    ] = 0.0,
    fault_seed: Annotated[
        int | None, typer.Option(metavar="SEED", help="Seed for fractional faults.")
    ] = None,
) -> None:
    """Run a Consul-compatible dev server (single node, for development and tests only)."""
    given = dict(locals())  # first: exactly the options above
    from ..devserver import DevServerOptions, ListenError, OptionError, run

    try:
        run(DevServerOptions(**given))
    except OptionError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except ListenError as exc:
        raise fail(str(exc)) from None
