"""Nox sessions: lint, conformance, tests, benchmarks, and both ends of the supported
version ranges.

Run in fresh virtualenvs (``nox -s conformance``) or on the current interpreter
(``nox --no-venv -s conformance`` after ``pip install -e .[dev]``).

``ends(newest)`` and ``ends(oldest)`` each make a fresh virtualenv, install the project
with the newest releases its ranges allow (Python 3.13) or with the oldest supported
versions pinned by ``constraints-oldest.txt`` (Python 3.11), print the versions, and run
the conformance suite and the unit tests there.  CI (``.ci/run``) runs ``lint`` and
``ends(newest)``.  Every session that runs the suites prints the versions it tested first.
Interpreters are found on ``PATH`` or under pyenv (``_python``); a missing one fails.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox

nox.options.sessions = ["lint", "conformance", "tests"]
# A session whose Python is missing fails instead of being skipped (a skip reads as green).
nox.options.error_on_missing_interpreters = True
# uv makes the fresh virtualenvs and installs into them when it is installed (pip install
# uv): about 4x quicker than virtualenv + pip; virtualenv otherwise.
nox.options.default_venv_backend = "uv|virtualenv"

ENV = {
    "JAX_NUMPY_RANK_PROMOTION": "raise",
    # Eight fake CPU devices so the mesh tests can shard on any machine.
    "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    "HYPOTHESIS_PROFILE": "ci",
}
# pytest exit code 5 means "no tests collected": not a failure for a session.
OK = [0, 5]
OLDEST = "constraints-oldest.txt"


def _python(version: str) -> str:
    """A runnable interpreter for ``version`` ("3.12"): ``pythonX.Y`` on PATH, else the
    newest pyenv install of it (pyenv's shim for a version that is not selected exits
    with an error, so nox alone reports it missing).  The bare version if none runs."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    installs = glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}"))
    patch = lambda path: [int(p) for p in path.split("/")[-3].split(".") if p.isdigit()]
    for candidate in [shutil.which(f"python{version}"), *sorted(installs, key=patch, reverse=True)]:
        if candidate and subprocess.run([candidate, "-c", "import venv"],
                                        capture_output=True).returncode == 0:
            return candidate
    return version


def _install(session: nox.Session, *constraints: str,
             extras: str = "dev,targets,distributed") -> None:
    # targets: the compile-only CUDA plugin, ptxas and libtpu, without which the tests
    # that compile for a deviceless GPU/TPU skip (and DIFF-06b is left unproved).
    # distributed: datatrove, for the multi-machine cleaning's tests (not at the oldest
    # end: datatrove needs a huggingface_hub the oldest tokenizers refuse).
    if session.venv_backend not in ("none", None):
        session.install("-e", f".[{extras}]", *constraints)
    session.run("python", "-m", "pythoncoder.utils.versions")


def _conformance(session: nox.Session) -> None:
    session.run(
        "python", "-m", "pytest", "conformance", "--conformance-report=build",
        *session.posargs, env=ENV, success_codes=OK,
    )


def _tests(session: nox.Session) -> None:
    session.run("python", "-m", "pytest", "tests", *session.posargs, env=ENV, success_codes=OK)


@nox.session
def conformance(session: nox.Session) -> None:
    """Spec-conformance suite; writes build/conformance-report.{json,md}."""
    _install(session)
    _conformance(session)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit tests (``slow`` ones excluded; pass ``-- -m slow`` to run them)."""
    _install(session)
    _tests(session)


@nox.session
@nox.parametrize(
    ("python", "end"),
    [nox.param(_python("3.11"), "oldest", id="oldest"),
     nox.param(_python("3.13"), "newest", id="newest")],
)
def ends(session: nox.Session, end: str) -> None:
    """Conformance + unit tests in a fresh virtualenv at one end of the supported ranges:
    ``oldest`` (Python 3.11, ``constraints-oldest.txt``) or ``newest`` (Python 3.13, the
    newest releases the ranges allow)."""
    if session.venv_backend in ("none", None):
        session.error("ends installs its own versions: run it without --no-venv")
    if end == "oldest":
        _install(session, "-c", OLDEST, extras="dev,targets")
    else:
        _install(session)
    _conformance(session)
    _tests(session)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint."""
    if session.venv_backend not in ("none", None):
        session.install("ruff")
    session.run("ruff", "--version")
    session.run("ruff", "check", ".")


@nox.session
def benchmarks(session: nox.Session) -> None:
    """pytest-benchmark suite on the default JAX backend; the project writes its figures
    to build/benchmarks.{json,md} and build/benchmark-figures.json."""
    _install(session, extras="dev")  # the backend's own jax: no compile-only plugins
    session.run(
        "python", "-m", "pytest", "benchmarks", "-p", "no:randomly", *session.posargs,
        env={k: v for k, v in ENV.items() if k != "XLA_FLAGS"}, success_codes=OK,
    )
