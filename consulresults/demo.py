"""End-to-end demo on the embedded dev server: ``scripts/demo`` (``python -m consulresults.demo``).

Starts a dev server in this process, then talks to it the way the result backend does, through
python-consul2 over real HTTP: a session with a TTL, results written under it, a blocking query
that wakes when a result lands, and the request counts the server saw.
"""

from __future__ import annotations

import threading
import time

import consul
from rich.console import Console
from rich.table import Table

from consulresults.devserver import DevServer


def main() -> None:
    console = Console()
    with DevServer(session_ttl_min="1s") as server:
        console.print(f"[bold]dev server[/] listening on {server.url}")
        client = consul.Consul(host=server.host, port=server.port)
        session = client.session.create(
            name="demo", behavior="delete", ttl=10, lock_delay=0, checks=[]
        )
        for n in range(3):
            client.kv.put(
                f"demo/celery-task-meta-{n}",
                f'{{"status": "SUCCESS", "result": {n}}}',
                acquire=session,
            )
        index, _ = client.kv.get("demo/celery-task-meta-late")
        threading.Timer(0.5, lambda: client.kv.put("demo/celery-task-meta-late", "{}")).start()
        started = time.monotonic()
        client.kv.get("demo/celery-task-meta-late", index=index, wait="10s")
        console.print(f"blocking query woke after {time.monotonic() - started:.2f}s")
        table = Table("key", "value", "session")
        for entry in client.kv.get("demo/", recurse=True)[1]:
            table.add_row(entry["Key"], entry["Value"].decode(), entry.get("Session") or "-")
        console.print(table)
        client.session.destroy(session)
        remaining = client.kv.get("demo/", recurse=True)[1] or []
        console.print(f"after the session is destroyed, {len(remaining)} key(s) remain")
        console.print(f"requests seen by the server: {server.counters()}")


if __name__ == "__main__":
    main()
