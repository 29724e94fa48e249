"""The CLI's Typer app answers plain values without pydantic, and gives exactly what Typer's own
coercion gives: the same values, and the same errors for values it hands back to Typer. That fast
path touches Typer's internals, so it runs only on a tested Typer with every internal present;
anywhere else (or with CONSUL_RESULTS_TYPER_FALLBACK=1) the CLI is plain Typer and answers the
same."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
import typer
import typer.core
from celery import states
from conftest import backend_url, run_cli
from typer.testing import CliRunner

from consulresults.commands import typer_app
from consulresults.commands.typer_app import FALLBACK_ENV, App, fast_path


def _show(
    ids: Annotated[list[str], typer.Argument()],
    name: Annotated[str | None, typer.Option()] = None,
    count: Annotated[int | None, typer.Option()] = None,
    ratio: Annotated[float, typer.Option()] = 30,
    wait: Annotated[float | None, typer.Option(min=0)] = None,
    state: Annotated[list[str] | None, typer.Option()] = None,
    flag: Annotated[bool, typer.Option()] = False,
    where: Annotated[Path | None, typer.Option()] = None,
) -> None:
    typer.echo(repr((ids, name, count, ratio, wait, state, flag, where)))


def _run(app: typer.Typer, argv: list[str]) -> tuple[int, str]:
    app.command("show")(_show)
    app.command("other")(lambda: None)
    result = CliRunner().invoke(app, ["show", *argv])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "argv",
    [
        ["a", "b"],
        ["a", "--name", "n", "--count", "5", "--ratio", "2.5", "--wait", "0"],
        ["a", "--count", "+3", "--ratio", "1e3", "--state", "x", "--state", "y", "--flag"],
        ["a", "--count", "-7", "--ratio", ".5"],
        ["a", "--where", "some/path", "--ratio", "inf"],
        ["a", "--count", "abc"],
        ["a", "--count", "1.5"],
        ["a", "--count", " 7"],
        ["a", "--count", "1_000"],
        ["a", "--ratio", "many"],
        ["a", "--wait", "-1"],
        ["a", "--count", "\uff11\uff12"],  # fullwidth digits
        ["a", "--ratio", "\u0661.\u0665"],  # Arabic-Indic digits
        ["a", "--count", "9" * 5000],  # longer than int() takes
        ["a", "--count", "0" * 150 + "7"],
        [],
    ],
)
@pytest.mark.parametrize("path", ["fast", "fallback"])
def test_same_values_and_errors_as_typers_own(argv, path, monkeypatch):
    monkeypatch.delenv(FALLBACK_ENV, raising=False)
    if path == "fallback":
        monkeypatch.setenv(FALLBACK_ENV, "1")
    assert fast_path() == (path == "fast" and _typer_is_tested())
    ours = _run(App(), argv)
    typers = _run(typer.Typer(rich_markup_mode=None), argv)
    assert ours == typers


def _typer_is_tested() -> bool:
    return typer_app.typer_tested(typer.__version__)


def _probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "import test_typer_app as t\n"
        "from consulresults.commands.typer_app import App\n"
        "print(t._run(App(), ['a', '--count', '5', '--ratio', '2.5', '--state', 'x', '--flag']))\n"
        "print('pydantic' in sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    return run


@pytest.mark.skipif(
    not _typer_is_tested(), reason=f"Typer {typer.__version__} is outside TESTED_TYPER"
)
def test_plain_values_do_not_import_pydantic():
    env = {k: v for k, v in os.environ.items() if k != FALLBACK_ENV}
    run = _probe(env)
    assert "(['a'], None, 5, 2.5, None, ['x'], True, None)" in run.stdout
    assert run.stdout.splitlines()[-1] == "False"


@pytest.mark.skipif(not _typer_is_tested(), reason="a tested Typer coerces through pydantic")
def test_the_fallback_is_typers_own_coercion():
    """Forced off, nothing is patched: Typer coerces every value, through pydantic."""
    run = _probe(dict(os.environ, **{FALLBACK_ENV: "1"}))
    assert "(['a'], None, 5, 2.5, None, ['x'], True, None)" in run.stdout
    assert run.stdout.splitlines()[-1] == "True"


def _patched(app: typer.Typer) -> bool:
    """Whether any parameter of ``app``'s ``show`` command came out of get_params patched."""
    app.command("show")(_show)
    app.command("other")(lambda: None)
    group = typer.main.get_command(app)
    command = group.get_command(typer.Context(group), "show")
    params = command.get_params(typer.Context(command))
    patched = {"get_runtime_param", "display_type_rich"}
    return any(patched & set(vars(p)) or p.metavar == "" for p in params)


def test_the_fast_path_is_on_exactly_for_a_tested_typer(monkeypatch):
    """On a Typer within TESTED_TYPER the detector finds every internal (else the fast path
    would be off unnoticed, and start-up slow); outside it, the fast path is off."""
    monkeypatch.delenv(FALLBACK_ENV, raising=False)
    assert typer_app.typer_internals_present() or not _typer_is_tested()
    assert fast_path() == _typer_is_tested()
    assert _patched(App()) == _typer_is_tested()
    for off in ("1", "yes"):
        monkeypatch.setenv(FALLBACK_ENV, off)
        assert not fast_path()
        assert not _patched(App())
    monkeypatch.setenv(FALLBACK_ENV, "0")
    assert fast_path() == _typer_is_tested()


@pytest.mark.parametrize(
    "version", ["0.28.0", "0.30.0", "1.0.0", "0.29.3rc1", "0.29.dev0", "", "unknown"]
)
def test_a_typer_outside_the_tested_range_gets_the_fallback(version, monkeypatch):
    monkeypatch.delenv(FALLBACK_ENV, raising=False)
    monkeypatch.setattr(typer, "__version__", version)
    assert not fast_path()
    assert not _patched(App())
    argv = ["a", "--count", "5", "--ratio", "2.5", "--flag", "--where", "p"]
    assert _run(App(), argv) == _run(typer.Typer(rich_markup_mode=None), argv)
    assert _run(App(), argv)[0] == 0


def test_the_tested_range_takes_every_patch_release():
    (low, low_minor), (high, high_minor) = typer_app.TESTED_TYPER
    assert typer_app.typer_tested(f"{low}.{low_minor}.0")
    assert typer_app.typer_tested(f"{high}.{high_minor}.17")
    assert not typer_app.typer_tested(f"{high}.{high_minor + 1}.0")
    assert not typer_app.typer_tested(f"{low}.{low_minor - 1}.9")


def _defining(cls: type, name: str) -> type:
    return next(k for k in cls.__mro__ if name in vars(k))


def _internals() -> dict[str, tuple[type, str]]:
    coercion = sys.modules["typer._coercion"]
    option, argument = typer.core.TyperOption, typer.core.TyperArgument
    return {
        "get_runtime_param": (_defining(option, "get_runtime_param"), "get_runtime_param"),
        "display_type_rich": (_defining(argument, "display_type_rich"), "display_type_rich"),
        "is_choice": (coercion.TypeDescriptor, "is_choice"),
        "RuntimeParam.coerce": (coercion.RuntimeParam, "coerce"),
        "TypeDescriptor": (coercion, "TypeDescriptor"),
        "TyperArgument": (typer.core, "TyperArgument"),
    }


@pytest.mark.skipif(not _typer_is_tested(), reason="the internals are those of a tested Typer")
@pytest.mark.parametrize(
    "internal",
    [
        "get_runtime_param",
        "display_type_rich",
        "is_choice",
        "RuntimeParam.coerce",
        "TypeDescriptor",
        "TyperArgument",
    ],
)
def test_a_missing_internal_gets_the_fallback(internal, monkeypatch):
    """A Typer that renamed any internal the fast path touches gets plain Typer."""
    monkeypatch.delenv(FALLBACK_ENV, raising=False)
    assert fast_path()
    owner, name = _internals()[internal]
    monkeypatch.delattr(owner, name)
    assert not typer_app.typer_internals_present()
    assert not fast_path()


@pytest.mark.skipif(not _typer_is_tested(), reason="the internals are those of a tested Typer")
def test_the_cli_works_without_an_internal_the_fast_path_needs(
    cli, make_app, consul_server, monkeypatch
):
    """TypeDescriptor.is_choice gone (Typer itself reads it only for help, a missing value's
    message and completion): the fallback answers as the fast path did; forcing the fast path
    on that Typer would have broken every command."""
    monkeypatch.delenv(FALLBACK_ENV, raising=False)
    backend = make_app().backend
    backend.store_result("ti-1", {"n": 1}, states.SUCCESS)
    before = [cli("get", "ti-1", "-o", "json"), cli("ls", "-o", "json"), cli("get", "nope")]
    monkeypatch.delattr(sys.modules["typer._coercion"].TypeDescriptor, "is_choice")
    assert not fast_path()
    after = [cli("get", "ti-1", "-o", "json"), cli("ls", "-o", "json"), cli("get", "nope")]
    assert [(r.exit_code, r.stdout, r.stderr) for r in after] == [
        (r.exit_code, r.stdout, r.stderr) for r in before
    ]
    assert [r.exit_code for r in after] == [0, 0, 3]
    assert json.loads(after[0].stdout)[0]["result"] == {"n": 1}
    monkeypatch.setattr(typer_app, "fast_path", lambda: True)  # what the old code did
    broken = cli("get", "ti-1", "-o", "json")
    assert broken.exit_code == 1
    assert isinstance(broken.exception, AttributeError)


# the fallback's help adds Typer's type label after an argument's metavar (ID... <list[str]>)
_TYPE_LABEL = re.compile(r" <[a-z][a-z0-9_\[\], |.]*>")
_HELP = [
    ["--help"],
    ["--version"],
    ["get", "--help"],
    ["ls", "--help"],
    ["watch", "--help"],
    ["sessions", "--help"],
    ["sessions", "show", "--help"],
    ["rm", "--help"],
    ["dev-server", "--help"],
    ["nope"],
]
_COMMANDS = [
    ["get", "tf-1"],
    ["get", "tf-1", "tf-2", "-o", "json"],
    ["get", "tf-1", "--field", "state"],
    ["get", "nope"],
    ["get", "tf-1", "--wait", "--timeout", "0.5"],
    ["get", "tf-1", "--wait", "--timeout", "-1"],
    ["get", "tf-1", "--wait", "--timeout", "soon"],
    ["get"],
    ["inspect", "tf-1", "-o", "json"],
    ["ls", "-o", "json"],
    ["ls", "--state", "SUCCESS", "--state", "FAILURE", "--sort", "state", "-o", "ids"],
    ["ls", "--limit", "1", "--count"],
    ["ls", "--limit", "0"],
    ["ls", "--older-than", "whenever"],
    ["ls", "--sort", "colour"],
    ["purge", "--dry-run"],
]


def test_the_forced_fallback_answers_as_the_fast_path(consul_server, consul_prefix, make_app):
    """The real CLI process, with and without CONSUL_RESULTS_TYPER_FALLBACK=1: same exit
    codes, same output (the help without Typer's type labels)."""
    backend = make_app().backend
    backend.store_result("tf-1", {"n": 1}, states.SUCCESS)
    backend.store_result("tf-2", ValueError("no"), states.FAILURE)
    connect = ["--backend-url", backend_url(consul_server, consul_prefix)]
    if consul_server.token:
        connect += ["--token", consul_server.token]
    fast_env = {k: v for k, v in os.environ.items() if k != FALLBACK_ENV}
    fallback_env = dict(fast_env, **{FALLBACK_ENV: "1"})
    labels = {"fast": 0, "fallback": 0}
    for argv in [*_HELP, *[[*a, *connect] for a in _COMMANDS]]:
        fast = run_cli(*argv, env=fast_env)
        fallback = run_cli(*argv, env=fallback_env)
        labels["fast"] += len(_TYPE_LABEL.findall(fast.stdout))
        labels["fallback"] += len(_TYPE_LABEL.findall(fallback.stdout))
        assert fast.returncode == fallback.returncode, (argv, fast.stderr, fallback.stderr)
        assert (_TYPE_LABEL.sub("", fast.stdout), fast.stderr) == (
            _TYPE_LABEL.sub("", fallback.stdout),
            fallback.stderr,
        ), argv
    assert labels["fallback"] > 0 or not _typer_is_tested()  # the fallback's help: Typer's own
    assert labels["fast"] == 0 or not _typer_is_tested()
