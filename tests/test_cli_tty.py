"""Terminal behaviour under a real pseudo-terminal: tables, prompts, progress, NO_COLOR."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import termios
import time

import pytest
from celery import states
from conftest import CONSUL_RESULTS, backend_url


def run_in_pty(
    args: list[str],
    answer: bytes | None = None,
    prompt: bytes = b"[y/N]",
    env: dict | None = None,
    timeout: float = 60,
) -> tuple[int, bytes]:
    """Run the CLI with stdin, stdout and stderr on a 120-column pseudo-terminal."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [*CONSUL_RESULTS, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env or dict(os.environ),
        close_fds=True,
    )
    os.close(slave)
    output = b""
    answered = answer is None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        if not answered and prompt in output:
            os.write(master, answer)
            answered = True
        if process.poll() is not None and not ready:
            break
    os.close(master)
    return process.wait(timeout=10), output


@pytest.fixture
def url(consul_server, consul_prefix, make_app):
    backend = make_app().backend
    for i in range(3):
        backend.store_result(f"tty-{i}", i, states.SUCCESS)
    if consul_server.token:
        pytest.skip("pty tests pass no token on the command line")
    return backend_url(consul_server, consul_prefix)


def test_ls_on_a_terminal_is_a_table(url):
    code, output = run_in_pty(["ls", "--backend-url", url])
    assert code == 0
    assert "┏" in output.decode() and "tty-0" in output.decode()


def test_no_color_on_a_terminal_has_no_colour_codes(url):
    env = dict(os.environ, NO_COLOR="1")
    code, output = run_in_pty(["ls", "--backend-url", url], env=env)
    assert code == 0
    assert b"\x1b[3" not in output  # no foreground colour escapes


def test_rm_asks_and_no_keeps_everything(url, make_app):
    code, output = run_in_pty(["rm", "tty-0", "--backend-url", url], answer=b"n\n")
    assert b"Delete 1 result(s) under" in output
    assert code == 2
    assert make_app().backend.operations().fetch("tty-0") is not None
    code, output = run_in_pty(["rm", "tty-0", "--backend-url", url], answer=b"y\n")
    assert code == 0
    assert b"deleted 1" in output
    assert make_app().backend.operations().fetch("tty-0") is None


def test_purge_progress_is_drawn_then_erased(url, make_app):
    backend = make_app().backend
    for i in range(400):
        backend.store_result(f"bulk-{i}", i, states.SUCCESS)
    code, output = run_in_pty(["purge", "--yes", "--backend-url", url])
    assert code == 0
    text = output.decode(errors="replace")
    assert "matched 403, deleted 403" in text
    assert "purging…" in text  # the progress line was drawn (rich refreshes on a timer)
    summary_at = text.index("matched 403")
    assert text.rfind("purging…") < summary_at
    assert "\x1b[1A\x1b[2K" in text[:summary_at]  # then erased: nothing left behind


def test_the_demo_table_keeps_one_line_per_result(make_app, consul_prefix):
    from rich.console import Console

    from consulresults.demo import show_results

    app = make_app()
    app.backend.store_result("long", ZeroDivisionError("division by zero " * 4), "FAILURE")
    app.backend.store_result("short", 5, "SUCCESS")
    console = Console(width=80, record=True, color_system=None)
    show_results(app, console, consul_prefix.rstrip("/"))
    lines = console.export_text().splitlines()
    rows = [line for line in lines if "SUCCESS" in line or "FAILURE" in line]
    assert len(lines) == len(rows) + 5  # title, 3 header rules and text, bottom rule
    assert "ZeroDivisionError" in rows[0] and "…" in rows[0]  # cut, not wrapped
    assert all(len(line) <= 80 for line in lines)
