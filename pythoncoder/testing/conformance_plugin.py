"""pytest plugin behind ``nox -s conformance``: requirement tags and the traceability report.

Tests tag the requirements they prove with ``@pytest.mark.req("DIFF-01", ...)``.

* A tag naming an ID that is not in ``spec/`` is a usage error at collection time.
* A test under a ``conformance/`` directory with no tag is a usage error too (every
  case cites its clause); tests elsewhere are ignored by the plugin.
* With ``--conformance-report=DIR`` the run is a full conformance run: every
  ``implemented`` requirement needs at least one *passing* tagged test, otherwise the
  session fails. The report ``DIR/conformance-report.json`` and ``.md`` list each
  requirement with its tests and their outcomes, ``planned`` ones included.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from pythoncoder.spec import DEFAULT_SPEC_DIR, load_spec

CONFORMANCE_DIR = "conformance"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance")
    group.addoption("--conformance-report", default=None, metavar="DIR",
                    help="full conformance run: enforce coverage, write the report to DIR")
    group.addoption("--spec-dir", default=str(DEFAULT_SPEC_DIR), metavar="DIR",
                    help="directory of spec/*.toml requirement files")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "req(*ids): conformance test proving requirement IDs")
    config.pluginmanager.register(_Tracker(load_spec(config.getoption("--spec-dir"))),
                                  "conformance-tracker")


class _Tracker:
    """Holds the tags and outcomes of one session."""

    def __init__(self, spec: dict) -> None:
        self.state = {"spec": spec, "tags": {}, "outcomes": {}}

    def pytest_collection_modifyitems(self, session, config: pytest.Config, items) -> None:
        spec, problems = self.state["spec"], []
        for item in items:
            if CONFORMANCE_DIR not in item.path.parts:
                continue  # unit tests collected in the same run are not conformance cases
            ids = [rid for m in item.iter_markers("req") for rid in m.args]
            if not ids:
                problems.append(f"{item.nodeid}: no @pytest.mark.req(...) tag")
            problems += [f"{item.nodeid}: unknown requirement id {rid!r}"
                         for rid in ids if rid not in spec]
            self.state["tags"][item.nodeid] = ids
        if problems:
            raise pytest.UsageError("conformance tagging errors:\n  " + "\n  ".join(problems))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        outcomes = self.state["outcomes"]
        if report.nodeid not in self.state["tags"]:
            return
        if report.when == "call":
            outcome = report.outcome
        elif report.failed:
            outcome = "error"
        elif report.skipped:
            outcome = "skipped"
        else:
            return
        if outcomes.get(report.nodeid) not in ("failed", "error"):
            outcomes[report.nodeid] = outcome  # a teardown pass never hides a failure

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        out_dir = session.config.getoption("--conformance-report")
        if not out_dir:
            return
        report = build_report(self.state)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "conformance-report.json").write_text(json.dumps(report, indent=2))
        (out / "conformance-report.md").write_text(render_markdown(report))
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        c = report["counts"]
        if tr is not None:
            tr.write_line(f"conformance: {c['implemented']} implemented / {c['planned']} planned "
                          f"requirements; report in {out}/conformance-report.{{json,md}}")
        if report["gaps"]:
            if tr is not None:
                tr.write_line("conformance FAILED: implemented requirements with no passing "
                              "test: " + ", ".join(report["gaps"]), red=True)
            if session.exitstatus in (0, pytest.ExitCode.NO_TESTS_COLLECTED):
                session.exitstatus = pytest.ExitCode.TESTS_FAILED


def build_report(state: dict) -> dict:
    """requirement -> tests -> result, plus totals and the list of coverage gaps."""
    by_req: dict[str, list[dict]] = defaultdict(list)
    for nodeid, ids in state["tags"].items():
        for rid in ids:
            outcome = state["outcomes"].get(nodeid, "not run")
            by_req[rid].append({"test": nodeid, "outcome": outcome})
    rows, gaps = [], []
    for rid, req in sorted(state["spec"].items()):
        tests = by_req.get(rid, [])
        n_pass = sum(t["outcome"] == "passed" for t in tests)
        n_fail = sum(t["outcome"] in ("failed", "error") for t in tests)
        if req.status == "implemented" and n_pass == 0:
            gaps.append(rid)
        result = (
            "FAIL" if n_fail else "PASS" if n_pass else
            ("NO PASSING TEST" if req.status == "implemented" else "planned")
        )
        rows.append({
            "id": rid, "title": req.title, "status": req.status, "issue": req.issue,
            "source": req.source, "result": result, "passed": n_pass, "failed": n_fail,
            "tests": tests,
        })
    counts = {
        "requirements": len(rows),
        "implemented": sum(r["status"] == "implemented" for r in rows),
        "planned": sum(r["status"] == "planned" for r in rows),
        "tests": len(state["tags"]),
        "tests_passed": sum(o == "passed" for o in state["outcomes"].values()),
        "tests_failed": sum(o in ("failed", "error") for o in state["outcomes"].values()),
        "tests_skipped": sum(o == "skipped" for o in state["outcomes"].values()),
    }
    return {"counts": counts, "gaps": gaps, "requirements": rows}


def render_markdown(report: dict) -> str:
    c = report["counts"]
    lines = [
        "# Conformance report",
        "",
        f"{c['requirements']} requirements: {c['implemented']} implemented, "
        f"{c['planned']} planned. "
        f"{c['tests']} tests: {c['tests_passed']} passed, {c['tests_failed']} failed, "
        f"{c['tests_skipped']} skipped.",
        "",
        "| requirement | status | issue | result | tests |",
        "|---|---|---|---|---|",
    ]
    for r in report["requirements"]:
        tests = "<br>".join(f"`{t['test'].split('::', 1)[-1]}` {t['outcome']}" for t in r["tests"])
        lines.append(f"| {r['id']} {r['title']} | {r['status']} | #{r['issue']} | {r['result']} | "
                     f"{tests or '-'} |")
    if report["gaps"]:
        lines += ["", "Implemented requirements without a passing test: "
                  + ", ".join(report["gaps"])]
    return "\n".join(lines) + "\n"
