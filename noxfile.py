"""The declared support range, tested: Python 3.10 to 3.13, each with the lowest Celery, Typer and
rich this package claims (pyproject.toml) and with the newest, on the fast part of the suite
(everything but the tests that run real workers or build and install the package, which the full
suite runs on one version). The CLI's fast path reaches into Typer's internals only within the
Typer range these sessions test (TESTED_TYPER in consulresults/commands/typer_app.py); each
session prints whether it is on.

    .venv/bin/nox                                 # all eight sessions
    .venv/bin/nox -s "tests-3.12(deps='lowest')"  # one of them
    .venv/bin/nox -- -x -k backend                # pytest arguments after --
"""

from __future__ import annotations

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
# pinned for the lowest, resolved with the package in one go (a later pin would leave, say, a
# twine that wants a newer rich); the newest are whatever pip picks
DEPS = {
    "lowest": ["celery==5.3.0", "typer==0.29.0", "rich==13.8.0"],
    "newest": [],
}
VERSIONS = (
    "import sys, celery, typer, importlib.metadata as m; "
    "from consulresults.commands.typer_app import fast_path; "
    "print('celery', celery.__version__, 'typer', typer.__version__, 'rich', m.version('rich'), "
    "'fast path', 'on' if fast_path() else 'off', sys.version)"
)

nox.options.reuse_existing_virtualenvs = False


@nox.session(python=PYTHONS)
@nox.parametrize("deps", list(DEPS))
def tests(session: nox.Session, deps: str) -> None:
    session.install(".[test]", *DEPS[deps])
    session.run("python", "-c", VERSIONS)
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "not slow and not e2e",
        *session.posargs,
    )
