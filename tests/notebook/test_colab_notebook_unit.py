"""The Colab notebook runs top to bottom on a real Jupyter kernel (tiny preset, CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "train_colab.ipynb"
REPO = NOTEBOOK.parents[1]


def _execute(work: Path, monkeypatch: pytest.MonkeyPatch, steps: int):
    settings = {"PRESET": "tiny", "STEPS": str(steps), "MAX_FILES": "12", "USE_DRIVE": "0",
                "WORK_DIR": str(work), "MAX_NEW_TOKENS": "8", "HUMANEVAL_LIMIT": "2",
                "HUMANEVAL_MAX_NEW_TOKENS": "8"}
    for name, value in settings.items():
        monkeypatch.setenv("PYTHONCODER_NB_" + name, value)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(work.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    return nb


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") if o.get("output_type") == "stream"
                       else json.dumps(o.get("data", {})))
    return "\n".join(out)


def test_notebook_runs_top_to_bottom_on_cpu(tmp_path, monkeypatch):
    work = tmp_path / "work"
    nb = _execute(work, monkeypatch, steps=3)
    text = _text(nb)
    run = work / "runs" / "tiny"
    assert (work / "data" / "tiny" / "manifest.json").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == "3"
    assert "3 logged steps" in text or "logged steps" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1, "the loss/LR plot is shown inline"
    rows = [json.loads(line) for line in (run / "humaneval.jsonl").read_text().splitlines()]
    assert {r["task_id"] for r in rows} == {"HumanEval/0", "HumanEval/1"}
    assert "pass@1" in text


@pytest.mark.slow
def test_notebook_resumes_after_a_runtime_restart(tmp_path, monkeypatch):
    work = tmp_path / "work"
    _execute(work, monkeypatch, steps=2)
    nb = _execute(work, monkeypatch, steps=4)  # a fresh kernel: what a restart gives
    text = _text(nb)
    assert "reusing prepared data" in text
    assert "--resume" in text
    steps = sorted(int(p.name) for p in (work / "runs" / "tiny" / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert steps[-1] == 4
