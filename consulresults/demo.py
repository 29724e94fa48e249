"""End-to-end demo on the embedded dev server: ``scripts/demo`` (``python -m consulresults.demo``).

Starts a Consul-compatible dev server, a real Celery worker (prefork pool, two processes, kombu's
filesystem broker: no broker server needed), runs a few tasks — a success, a failure, a group and
a chord — then shows what is stored in Consul and how many requests it took.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery, chord, group
from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from rich.console import Console
from rich.table import Table

PREFIX = "demo"


class _AtomicFilesystemChannel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Write the message beside the queue, then rename it in. kombu's own ``_put`` creates
        the message file in the queue and writes it after: a worker taking it in between
        reads it empty, and dies of the JSON error (it happened under a 300-part chord)."""
        name = f"{int(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".partial"  # not ``<queue>.msg``: no reader takes it
        try:
            with open(partial, "wb") as out:
                out.write(json.dumps(payload).encode())
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class AtomicFilesystemTransport(filesystem.Transport):
    """kombu's filesystem transport, whose messages appear in the queue whole."""

    Channel = _AtomicFilesystemChannel


TRANSPORT_ALIASES.setdefault(
    "atomicfs", "consulresults.demo:AtomicFilesystemTransport"
)  # kombu's registry of ``scheme://`` names


def filesystem_broker(directory: str | Path) -> dict[str, Any]:
    """Celery settings for kombu's filesystem transport in ``directory``: a broker that needs
    no server (the demo and the end-to-end tests use it)."""
    folders = {name: str(Path(directory, name)) for name in ("queue", "processed", "control")}
    for folder in folders.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "atomicfs://",
        "broker_transport_options": {
            "data_folder_in": folders["queue"],
            "data_folder_out": folders["queue"],
            "processed_folder": folders["processed"],
            "control_folder": folders["control"],
            "store_processed": False,
            "polling_interval": 0.05,
        },
    }


def make_app(backend_url: str, broker_dir: str) -> Celery:
    app = Celery("consulresults-demo", set_as_current=False)
    app.conf.update(
        filesystem_broker(broker_dir),
        result_backend=backend_url,
        result_expires=3600,
        result_extended=True,
        task_track_started=True,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="demo.add", shared=False)
    def add(x: float, y: float) -> float:
        return x + y

    @app.task(name="demo.divide", shared=False)
    def divide(x: float, y: float) -> float:
        return x / y

    @app.task(name="demo.total", shared=False)
    def total(values: list[float]) -> float:
        return sum(values)

    return app


app = make_app(
    os.environ.get("DEMO_BACKEND_URL", "consulresults://"),
    os.environ.get("DEMO_BROKER_DIR", tempfile.gettempdir()),
)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "consulresults.demo",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "2",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while "ready." not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the demo worker did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return process


def run_tasks(client: Celery, console: Console) -> None:
    console.print("add(2, 3) →", client.signature("demo.add", (2, 3)).delay().get(timeout=30))
    failed = client.signature("demo.divide", (1, 0)).delay()
    try:
        failed.get(timeout=30)
    except ZeroDivisionError as exc:
        console.print(f"divide(1, 0) → {type(exc).__name__} (traceback stored)")
    squares = group(client.signature("demo.add", (i, i)) for i in range(5)).delay()
    console.print("group of 5 →", squares.get(timeout=30))
    header = [client.signature("demo.add", (i, 1)) for i in range(10)]
    console.print(
        "chord of 10 parts → total", chord(header)(client.signature("demo.total")).get(timeout=60)
    )


def show_results(client: Celery, console: Console, prefix: str = PREFIX) -> None:
    backend = client.backend
    _, entries = backend.client().kv.get(f"{prefix}/", recurse=True)
    table = Table(title=f"stored under {prefix}/")
    for column in ("key", "state", "result", "session"):
        table.add_column(column, no_wrap=True)
    for entry in entries or []:
        name = entry["Key"].removeprefix(f"{prefix}/")
        if name.startswith("celery-task-meta-"):
            meta = backend.decode_result(entry["Value"])
            state, result = meta["status"], _cut(repr(meta["result"]), 22)
        else:
            state, result = "(group/chord)", ""
        session = (entry.get("Session") or "-")[:8]
        table.add_row(_cut(name, 22), state, result, session)
    console.print(table)


def _cut(text: str, width: int) -> str:
    """At most ``width`` characters, so that a row stays one line in 80 columns."""
    return text if len(text) <= width else text[: width - 1] + "…"


def main() -> None:
    try:
        from consulresults.devserver import DevServer
    except ModuleNotFoundError as exc:  # a plain install: its message says what to install
        sys.exit(f"consulresults.demo: {exc}")

    console = Console()
    with DevServer() as server, tempfile.TemporaryDirectory() as tmp:
        console.print(f"[bold]dev server[/] {server.url}")
        url = f"consulresults://{server.address}/{PREFIX}"
        env = dict(os.environ, DEMO_BACKEND_URL=url, DEMO_BROKER_DIR=tmp)
        worker = start_worker(env, Path(tmp, "worker.log"))
        console.print("[bold]worker[/] started (prefork, 2 processes)")
        try:
            client = make_app(url, tmp)
            run_tasks(client, console)
            show_results(client, console)
            counts = server.counters()
            console.print(
                f"Consul requests: {counts['requests']} in all — txn {counts.get('txn', 0)}"
                f", kv.get {counts.get('kv.get', 0)}, sessions created "
                f"{counts.get('session.create', 0)}"
            )
        finally:
            worker.terminate()
            worker.wait(timeout=30)


if __name__ == "__main__":
    main()
