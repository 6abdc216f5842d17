"""The conformance harness itself: it must fail on each of the conditions it guards."""

import json

import pytest

from pythoncoder.spec import SpecError, load_spec

pytest_plugins = ["pytester"]

SPEC = '''
[[requirement]]
id = "X-01"
title = "implemented one"
text = "t"
source = "s"
status = "implemented"
issue = 1
[requirement.check]
value = 3

[[requirement]]
id = "X-02"
title = "planned one"
text = "t"
source = "s"
status = "planned"
issue = 2
'''


@pytest.fixture
def project(pytester):
    (pytester.path / "spec").mkdir()
    (pytester.path / "spec" / "x.toml").write_text(SPEC)
    conf = pytester.path / "conformance"
    conf.mkdir()
    (conf / "conftest.py").write_text(
        'pytest_plugins = ["pythoncoder.testing.conformance_plugin"]\n')
    return pytester


def _run(pytester):
    return pytester.runpytest_subprocess(
        "conformance", f"--spec-dir={pytester.path / 'spec'}", "--conformance-report=build",
        "-p", "no:cacheprovider", "-o", "addopts=")


def test_green_run_writes_report(project):
    (project.path / "conformance" / "test_a.py").write_text(
        "import pytest\n@pytest.mark.req('X-01')\ndef test_ok():\n    assert True\n")
    result = _run(project)
    assert result.ret == 0
    report = json.loads((project.path / "build" / "conformance-report.json").read_text())
    rows = {r["id"]: r for r in report["requirements"]}
    assert rows["X-01"]["result"] == "PASS" and rows["X-01"]["tests"][0]["outcome"] == "passed"
    assert rows["X-02"]["result"] == "planned"  # planned requirements stay visible
    assert report["counts"]["planned"] == 1 and report["gaps"] == []
    md = (project.path / "build" / "conformance-report.md").read_text()
    assert "| X-01 implemented one | implemented | #1 | PASS |" in md


def test_implemented_without_test_fails(project):
    (project.path / "conformance" / "test_a.py").write_text(
        "import pytest\n@pytest.mark.req('X-02')\ndef test_ok():\n    assert True\n")
    result = _run(project)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*implemented requirements with no passing test: X-01*"])


def test_unknown_id_is_an_error(project):
    (project.path / "conformance" / "test_a.py").write_text(
        "import pytest\n@pytest.mark.req('X-01', 'NOPE-9')\ndef test_ok():\n    assert True\n")
    result = _run(project)
    assert result.ret != 0
    assert "unknown requirement id 'NOPE-9'" in result.stderr.str() + result.stdout.str()


def test_untagged_conformance_test_is_an_error(project):
    (project.path / "conformance" / "test_a.py").write_text("def test_ok():\n    assert True\n")
    result = _run(project)
    assert result.ret != 0
    assert "no @pytest.mark.req" in result.stderr.str() + result.stdout.str()


def test_failing_test_fails_the_run(project):
    (project.path / "conformance" / "test_a.py").write_text(
        "import pytest\n@pytest.mark.req('X-01')\ndef test_bad():\n    assert 1 == 2\n")
    result = _run(project)
    assert result.ret == 1
    report = json.loads((project.path / "build" / "conformance-report.json").read_text())
    assert report["requirements"][0]["result"] == "FAIL" and report["gaps"] == ["X-01"]


def test_spec_loader_rejects_bad_files(tmp_path):
    (tmp_path / "a.toml").write_text(SPEC)
    assert load_spec(tmp_path)["X-01"].check == {"value": 3}
    (tmp_path / "b.toml").write_text(SPEC.split("[[requirement]]")[1].join(["[[requirement]]",
                                                                            ""]))
    with pytest.raises(SpecError, match="duplicate requirement id 'X-01'"):
        load_spec(tmp_path)
    (tmp_path / "b.toml").write_text(SPEC.replace('"planned"', '"done"').replace("X-0", "Y-0"))
    with pytest.raises(SpecError, match="status 'done'"):
        load_spec(tmp_path)


def test_repository_spec_covers_every_requirement_id():
    """Every ID of requirements.md is in spec/ (the list is the design's, copied here)."""
    ids = set(load_spec())
    expected = (
        [f"ARCH-0{i}" for i in range(1, 6)] + [f"DIFF-0{i}" for i in range(1, 6)]
        + ["ROPE-01", "YARN-01", "MTP-01", "MTP-02", "DROP-01", "NUM-01"]
        + [f"TRAIN-0{i}" for i in range(1, 10)] + ["TOK-01", "TOK-02"]
        + [f"DATA-0{i}" for i in range(1, 4)] + [f"INF-0{i}" for i in range(1, 5)]
        + [f"EVAL-0{i}" for i in range(1, 4)] + ["BENCH-01"]
    )
    assert set(expected) <= ids
