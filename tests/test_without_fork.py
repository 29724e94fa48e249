"""Where ``os.register_at_fork`` does not exist (Windows, an operator's laptop), the package
still imports and the CLI still runs: there is no fork to guard against."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_the_package_imports_and_the_cli_runs_without_register_at_fork(consul_server, cli):
    script = textwrap.dedent(
        """
        import os, sys
        del os.register_at_fork, os.fork  # as on Windows (the stdlib checks os.fork)
        from consulresults.cli import main
        sys.argv = ["consul-results", *sys.argv[1:]]
        main()
        """
    )
    args = ["ls", "--http-addr", consul_server.address, "--prefix", "nofork", "-o", "json"]
    if getattr(consul_server, "token", None):
        args += ["--token", consul_server.token]
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
