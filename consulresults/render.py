"""How the CLI shows things: data on stdout (a table on a terminal, or json/ndjson/tsv/ids for
scripts), everything else on stderr, colour only when wanted (``NO_COLOR`` is respected)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

from rich.console import Console
from rich.table import Table

FORMATS = ("table", "json", "ndjson", "tsv", "ids")


def stdout_console() -> Console:
    return Console(no_color="NO_COLOR" in os.environ, highlight=False, soft_wrap=False)


def stderr_console() -> Console:
    return Console(stderr=True, no_color="NO_COLOR" in os.environ, highlight=False)


def iso(timestamp: float | None) -> str | None:
    """Unix time as ISO 8601 UTC (seconds), or None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def emit(
    rows: Sequence[dict],
    columns: Sequence[str],
    fmt: str,
    id_column: str = "id",
    title: str | None = None,
) -> None:
    """Write ``rows`` in ``fmt``: json prints ``[]`` for nothing; ids prints one id a line."""
    out = sys.stdout
    if fmt == "json":
        out.write(json.dumps(list(rows), indent=2, default=str) + "\n")
    elif fmt == "ndjson":
        for row in rows:
            out.write(json.dumps(row, default=str) + "\n")
    elif fmt == "ids":
        for row in rows:
            out.write(f"{row[id_column]}\n")
    elif fmt == "tsv":
        out.write("\t".join(columns) + "\n")
        for row in rows:
            out.write(
                "\t".join(_cell(row.get(c)).replace("\t", " ").replace("\n", " ") for c in columns)
                + "\n"
            )
    else:
        table = Table(*columns, title=title, show_lines=False)
        for row in rows:
            table.add_row(*(_cell(row.get(c)) for c in columns))
        stdout_console().print(table)


def emit_mapping(data: dict, fmt: str) -> None:
    """A single object: pretty JSON for json/ndjson, ``key<TAB>value`` lines otherwise."""
    if fmt in ("json", "ndjson"):
        indent = 2 if fmt == "json" else None
        sys.stdout.write(json.dumps(data, indent=indent, default=str) + "\n")
        return
    if fmt == "table":
        table = Table("field", "value", show_header=False)
        for key, value in data.items():
            table.add_row(key, _cell(value))
        stdout_console().print(table)
        return
    for key, value in data.items():
        sys.stdout.write(f"{key}\t{_cell(value)}\n")


def default_format(requested: str | None) -> str:
    """A table on a terminal, tab-separated values when piped, unless asked otherwise."""
    if requested:
        return requested
    return "table" if sys.stdout.isatty() else "tsv"
