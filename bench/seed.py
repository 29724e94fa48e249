"""Fill a prefix with realistic Celery results fast: ``/v1/txn`` batches of 128 ``set``s.

Used by the benchmarks and by the bounded-memory test, so both measure the same data.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import requests


def celery_meta(task_id: str, n: int) -> bytes:
    """A result as Celery's JSON serializer writes it with result_extended (~330 bytes); one in
    ten is a FAILURE, with the exception in Celery's own JSON form."""
    done = datetime(2026, 11, 1, tzinfo=timezone.utc) + timedelta(seconds=n)
    failed = n % 10 == 0
    error = {"exc_type": "ValueError", "exc_message": [f"job {n} failed"], "exc_module": "builtins"}
    return json.dumps(
        {
            "status": "FAILURE" if failed else "SUCCESS",
            "result": error if failed else {"value": n, "ok": True},
            "traceback": "Traceback (most recent call last):\nValueError" if failed else None,
            "children": [],
            "date_done": done.isoformat(),
            "task_id": task_id,
            "name": f"app.tasks.job{n % 7}",
            "args": [n, "x"],
            "kwargs": {},
            "worker": "w1@host",
            "retries": 0,
            "queue": "celery",
        }
    ).encode()


def seed(base_url: str, prefix: str, count: int, token: str | None = None) -> list[str]:
    """Store ``count`` results under ``prefix``; return their task ids."""
    session = requests.Session()
    if token:
        session.headers["X-Consul-Token"] = token
    ids = [f"{i:08d}-0000-4000-8000-{i:012d}" for i in range(count)]
    for start in range(0, count, 128):
        ops = [
            {
                "KV": {
                    "Verb": "set",
                    "Key": f"{prefix}/celery-task-meta-{task_id}",
                    "Value": base64.b64encode(celery_meta(task_id, start + i)).decode(),
                }
            }
            for i, task_id in enumerate(ids[start : start + 128])
        ]
        response = session.put(f"{base_url}/v1/txn", json=ops, timeout=60)
        response.raise_for_status()
    return ids
