"""The declared support range, tested: Python 3.10 to 3.13, each with the lowest Celery this
package claims and the newest, on the fast part of the suite (everything but the tests that run
real workers or build and install the package, which the full suite runs on one version).

    .venv/bin/nox                                   # all eight sessions
    .venv/bin/nox -s "tests-3.12(celery='lowest')"  # one of them
    .venv/bin/nox -- -x -k backend                  # pytest arguments after --
"""

from __future__ import annotations

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
CELERY = {"lowest": "celery==5.3.0", "newest": "celery"}

nox.options.reuse_existing_virtualenvs = False


@nox.session(python=PYTHONS)
@nox.parametrize("celery", list(CELERY))
def tests(session: nox.Session, celery: str) -> None:
    session.install(".[test]")
    session.install("--upgrade", CELERY[celery])
    session.run(
        "python", "-c", "import celery, sys; print('celery', celery.__version__, sys.version)"
    )
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
