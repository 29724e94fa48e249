"""Purge of 100,000 results in bounded memory: the CLI as a real process on a real dev server."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import pytest

from consulresults.devserver import DevServerProcess
from consulresults.pytest_plugin import REAL_AGENT_SKIP, external_consul

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from conftest import run_cli
from seed import seed

COUNT = 100_000
MEMORY_LIMIT_MB = 300


@pytest.mark.skipif(external_consul() is not None, reason=REAL_AGENT_SKIP)
def test_purge_of_100k_results_in_bounded_memory():
    with DevServerProcess() as server:
        seed(server.url, "big", COUNT)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        result = run_cli(
            "purge",
            "--yes",
            "--json",
            "--http-addr",
            server.address,
            "--prefix",
            "big",
            "--state",
            "SUCCESS",
            timeout=600,
        )
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == (
            '{"matched": 90000, "deleted": 90000, "skipped": 0, "failed": 0, "dry_run": false, '
            '"complete": true, "in_doubt": 0}'
        )
        assert before / 1024 < MEMORY_LIMIT_MB  # the dev server child did not set the peak
        assert peak_mb < MEMORY_LIMIT_MB, f"purge peaked at {peak_mb:.0f} MB"
        left = run_cli("ls", "--count", "--http-addr", server.address, "--prefix", "big")
        assert left.stdout == "10000\n"
