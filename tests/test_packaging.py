"""The package as users get it: ``python -m build`` makes an sdist and a wheel that ``twine check``
accepts; the wheel, installed into a fresh virtual environment and run away from the source
tree, gives ``consul-results --version``, a working ``dev-server``, the pytest plugin, the man
page (where ``--help`` says it is) and ``py.typed``."""

from __future__ import annotations

import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.e2e  # builds and installs: the full suite runs it, not the matrix

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_TEST = """
def test_the_plugin_gives_a_consul(consul_server, consul_prefix):
    import requests
    key = f"{consul_server.url}/v1/kv/{consul_prefix}k"
    assert requests.put(key, data=b"v", timeout=10).json() is True
"""


def run(*args: str | Path, cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh environment, a directory outside the source tree) with the built wheel."""
    home = tmp_path_factory.mktemp("packaging")
    dist = home / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=home)
    built = sorted(p.name for p in dist.iterdir())
    assert [n.endswith(".tar.gz") or n.endswith(".whl") for n in built] == [True, True]
    run(sys.executable, "-m", "twine", "check", "--strict", *dist.iterdir(), cwd=home)
    env = home / "venv"
    venv.create(env, with_pip=True)
    wheel = next(dist.glob("*.whl"))
    run(env / "bin" / "python", "-m", "pip", "install", "-q", wheel, "pytest", "requests", cwd=home)
    return env, home


def test_the_installed_cli_runs_outside_the_source_tree(installed):
    env, home = installed
    assert run(env / "bin" / "consul-results", "--version", cwd=home).startswith("consul-results ")
    where = run(
        env / "bin" / "python",
        "-c",
        "import consulresults; print(consulresults.__file__)",
        cwd=home,
    )
    assert str(env) in where and str(ROOT) not in where


def test_the_installed_dev_server_answers(installed):
    env, home = installed
    server = subprocess.Popen(
        [env / "bin" / "consul-results", "dev-server", "--port", "0"],
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        address = None
        while address is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            assert line, "dev-server exited before announcing its address"
            if "http://" in line:
                address = line[line.index("http://") :].split()[0].rstrip(".,)")
        assert address is not None
        assert requests.get(f"{address}/v1/status/leader", timeout=10).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_installed_pytest_plugin_works(installed):
    env, home = installed
    (home / "test_plugin_outside.py").write_text(PLUGIN_TEST)
    out = run(
        env / "bin" / "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "test_plugin_outside.py",
        cwd=home,
    )
    assert "1 passed" in out


def test_the_man_page_and_py_typed_ship(installed):
    env, home = installed
    page = env / "share" / "man" / "man1" / "consul-results.1"
    assert ".TH CONSUL-RESULTS 1" in page.read_text()
    help_text = run(env / "bin" / "consul-results", "--help", cwd=home)
    assert "consul-results.1" in help_text.replace("\n", "").replace(" ", "")
    typed = run(
        env / "bin" / "python",
        "-c",
        "import consulresults, pathlib; "
        "print(pathlib.Path(consulresults.__file__).with_name('py.typed').exists())",
        cwd=home,
    )
    assert typed.strip() == "True"
