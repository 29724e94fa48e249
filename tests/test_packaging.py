"""The package as users get it: ``python -m build`` makes an sdist and a wheel that ``twine check``
accepts; the wheel, installed into a fresh virtual environment and run away from the source
tree, gives ``consul-results --version``, a working ``dev-server``, the pytest plugin, the man
page (where ``--help`` says it is) and ``py.typed``. Installed without the ``server`` extra, the
environment has no aiohttp, the pytest plugin still loads, and the dev server, its fixtures and
the demo say in one line how to get it."""

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
HINT = "the dev server needs aiohttp, which is not installed: pip install 'consul-results[server]'"
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
def wheel(tmp_path_factory) -> Path:
    """The wheel built from the tree (its sdist built and checked beside it)."""
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=dist)
    built = sorted(p.name for p in dist.iterdir())
    assert [n.endswith(".tar.gz") or n.endswith(".whl") for n in built] == [True, True]
    run(sys.executable, "-m", "twine", "check", "--strict", *dist.iterdir(), cwd=dist)
    return next(dist.glob("*.whl"))


def fresh_environment(home: Path, *requirements: str | Path) -> Path:
    """A new virtual environment under ``home`` with ``requirements`` installed."""
    env = home / "venv"
    venv.create(env, with_pip=True)
    run(env / "bin" / "python", "-m", "pip", "install", "-q", *requirements, cwd=home)
    return env


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh environment, a directory outside the source tree) with the built wheel and
    its ``server`` extra."""
    home = tmp_path_factory.mktemp("packaging")
    return fresh_environment(home, f"{wheel}[server]", "pytest", "requests"), home


@pytest.fixture(scope="module")
def lean(wheel, tmp_path_factory) -> tuple[Path, Path]:
    """The same with the wheel alone (and pytest, as an application's tests would have)."""
    home = tmp_path_factory.mktemp("lean")
    return fresh_environment(home, wheel, "pytest"), home


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


def test_a_plain_install_has_no_aiohttp_and_says_how_to_get_the_dev_server(lean):
    env, home = lean
    python = env / "bin" / "python"
    missing = subprocess.run(
        [python, "-c", "import aiohttp"], cwd=home, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode != 0 and "ModuleNotFoundError" in missing.stderr
    run(python, "-c", "import consulresults.pytest_plugin, consulresults.backend", cwd=home)
    for command in (
        [env / "bin" / "consul-results", "dev-server"],
        [python, "-m", "consulresults.demo"],
    ):
        done = subprocess.run(command, cwd=home, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0, command
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert done.stderr.rstrip().endswith(HINT), done.stderr


def test_a_plain_install_fails_the_dev_server_fixture_in_one_line(lean):
    env, home = lean
    (home / "test_plugin_lean.py").write_text(PLUGIN_TEST)
    done = subprocess.run(
        [
            env / "bin" / "python",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_plugin_lean.py",
        ],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 error" in done.stdout
    assert HINT in done.stdout
    assert "Traceback" not in done.stdout
