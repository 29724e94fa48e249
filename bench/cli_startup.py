"""CLI start-up as whole processes, next to Celery's own CLI, in one run on one machine.

An operator's ``consul-results get ID`` competes with ``celery -A APP result ID`` (same result,
same dev server), and ``--help`` with ``celery --help``: what matters is the wall time of a fresh
process, imports included. Commands run interleaved (ours, Celery's, ours...) to share machine
noise; prints median and min per command, the ratios (ours / Celery's) and a final JSON line.

    .venv/bin/python bench/cli_startup.py [--runs 15] [--source DIR]

``--source DIR`` measures another copy of the code (e.g. ``git archive HEAD | tar -x -C DIR``):
DIR goes first on PYTHONPATH of every process, so it also wins over the editable install for the
``consulresults://`` entry point. Processes run in a temp dir, since ``-m`` puts the cwd first.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

APP = """from celery import Celery

app = Celery("benchapp", broker="memory://", backend="consulresults://{address}/{prefix}")
"""
WHICH = (
    "import consulresults, sys; from celery.app.backends import by_name; "
    "print(consulresults.__file__); "
    "print(sys.modules[by_name('consulresults').__module__].__file__)"
)


def run(command: list[str], expect: str | None = None) -> float:
    """Wall time of one process; fails loudly on a bad exit or output."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or (expect is not None and expect not in done.stdout):
        raise RuntimeError(f"{command} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return elapsed


def pair(ours: list[str], celery: list[str], runs: int, expect: str | None) -> dict:
    """Warm up each once (checking the output), then time them interleaved."""
    run(ours, expect)
    run(celery, expect)
    times: dict[str, list[float]] = {"ours": [], "celery": []}
    for _ in range(runs):
        times["ours"].append(run(ours, expect))
        times["celery"].append(run(celery, expect))
    row = {k: {"median": statistics.median(v), "min": min(v)} for k, v in times.items()}
    for stat in ("median", "min"):
        row[f"ratio_{stat}"] = row["ours"][stat] / row["celery"][stat]
    return row


def measure(workdir: str, runs: int) -> dict:
    from consulresults.devserver import DevServerProcess

    ours, celery = [sys.executable, "-m", "consulresults"], [sys.executable, "-m", "celery"]
    which = subprocess.run([sys.executable, "-c", WHICH], capture_output=True, text=True)
    with DevServerProcess() as server:
        prefix, task_id = f"bench-{uuid.uuid4().hex[:6]}", str(uuid.uuid4())
        with open(os.path.join(workdir, "benchapp.py"), "w") as f:
            f.write(APP.format(address=server.address, prefix=prefix))
        app = importlib.import_module("benchapp").app
        app.backend.store_result(task_id, {"answer": 42}, "SUCCESS")
        get = pair(
            [*ours, "get", task_id, "--prefix", prefix, "--http-addr", server.address],
            [*celery, "-A", "benchapp", "result", task_id],
            runs,
            "42",
        )
    help_ = pair([*ours, "--help"], [*celery, "--help"], runs, None)
    copy = which.stdout.split() or [f"unknown ({which.stderr.strip()[-200:]})"]
    return {"runs": runs, "copy": copy, "get": get, "help": help_}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--source", help="measure this copy of the code instead of the install")
    args = parser.parse_args()
    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as workdir:
        front = [os.path.abspath(args.source)] if args.source else []
        sys.path[:0] = [*front, workdir]
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [*front, workdir, *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        os.chdir(workdir)  # the dev server and every measured process start here
        try:
            figures = measure(workdir, args.runs)
        finally:
            os.chdir(home)
    print(f"consulresults: {figures['copy'][0]}  (backend entry point: {figures['copy'][-1]})")
    print(f"{'command':<28} {'median s':>9} {'min s':>7}")
    names = {
        "get": {"ours": "consul-results get ID", "celery": "celery -A APP result ID"},
        "help": {"ours": "consul-results --help", "celery": "celery --help"},
    }
    for op, commands in names.items():
        for who, name in commands.items():
            stats = figures[op][who]
            print(f"{name:<28} {stats['median']:>9.3f} {stats['min']:>7.3f}")
        row = figures[op]
        print(f"{'  ratio ours/celery':<28} {row['ratio_median']:>9.2f} {row['ratio_min']:>7.2f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
