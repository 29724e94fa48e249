"""The committed man page matches the CLI and passes mandoc's lint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "man" / "consul-results.1"


def test_man_page_is_generated_from_the_current_cli():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_man.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_man_page_documents_every_command_and_option():
    page = PAGE.read_text()
    for needle in (
        ".SS dev\\-server",
        "\\-\\-data\\-dir",
        "\\-\\-acl\\-token",
        ".SH EXIT STATUS",
        ".SH ENVIRONMENT",
        ".SH EXAMPLES",
        ".SH SEE ALSO",
    ):
        assert needle in page


def test_mandoc_lint_reports_no_warnings():
    mandoc = shutil.which("mandoc")
    assert mandoc, "mandoc is needed for this test: apt-get install mandoc (scripts/test does)"
    result = subprocess.run(
        [mandoc, "-T", "lint", "-W", "warning", str(PAGE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
