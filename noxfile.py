"""Nox sessions: conformance, tests, lint, benchmarks.

Run in fresh virtualenvs (``nox -s conformance``) or on the current interpreter
(``nox --no-venv -s conformance``, as CI does after ``pip install -e .[dev]``).
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "conformance", "tests"]

ENV = {
    "JAX_NUMPY_RANK_PROMOTION": "raise",
    # Eight fake CPU devices so the mesh tests can shard on any machine.
    "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    "HYPOTHESIS_PROFILE": "ci",
}
# pytest exit code 5 means "no tests collected": not a failure for a session.
OK = [0, 5]


def _install(session: nox.Session) -> None:
    if session.venv_backend not in ("none", None):
        session.install("-e", ".[dev]")


@nox.session
def conformance(session: nox.Session) -> None:
    """Spec-conformance suite; writes build/conformance-report.{json,md}."""
    _install(session)
    session.run(
        "python", "-m", "pytest", "conformance", "--conformance-report=build",
        *session.posargs, env=ENV, success_codes=OK,
    )


@nox.session
def tests(session: nox.Session) -> None:
    """Unit tests (``slow`` ones excluded; pass ``-- -m slow`` to run them)."""
    _install(session)
    session.run("python", "-m", "pytest", "tests", *session.posargs, env=ENV, success_codes=OK)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint."""
    if session.venv_backend not in ("none", None):
        session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def benchmarks(session: nox.Session) -> None:
    """pytest-benchmark suite on the default JAX backend; writes build/benchmarks.json."""
    _install(session)
    session.run(
        "python", "-m", "pytest", "benchmarks", "-p", "no:randomly",
        "--benchmark-json=build/benchmarks.json", *session.posargs,
        env={k: v for k, v in ENV.items() if k != "XLA_FLAGS"}, success_codes=OK,
    )
