"""The README's first command in miniature: `pythoncoder train` with the tiny preset's
demo defaults (vocabulary subset, batch, learning rate) on a slice of the stdlib, then
`generate` from the run.  The loss must fall within a few steps."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from pythoncoder.cli import main as cli_main


def _cli(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def stdlib_slice(tmp_path_factory):
    from pythoncoder.data.prepare import prepare

    out = tmp_path_factory.mktemp("stdlib-slice")
    prepare([], out, seq_len=256, max_files=80, val_fraction=0.1, num_workers=1,
            progress=False)
    return out


def test_demo_defaults_train_and_the_loss_falls(stdlib_slice, tmp_path):
    run = tmp_path / "run"
    code, out, err = _cli(["train", "--data", str(stdlib_slice), "--out", str(run),
                           "--steps", "16", "--no-progress", "--eval-batches", "2"])
    assert code == 0, err[-3000:]
    assert "vocabulary: 8,192 rows" in err  # the demo's default subset
    saved = json.loads((run / "run.json").read_text())["model"]
    assert len(saved["vocab_subset"]) == 8191 and saved["name"] == "tiny"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in rows if "loss" in r]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(train) == 16 and len(val) >= 2
    # full-vocabulary cross-entropy: starts near ln(8192) + the "other" share, falls fast
    assert train[0] > 8.5
    assert sum(train[-4:]) / 4 < train[0] - 1.5, train
    assert val[-1] < val[0] - 1.0, val

    code, out, err = _cli(["generate", "--run", str(run), "--prompt", "def f(x):",
                           "--max-new-tokens", "8", "--json"])
    assert code == 0, err[-3000:]
    result = json.loads(out)
    tokens = result["tokens"][0]
    assert len(tokens) == 8 and result["finish_reasons"] == ["length"]
    # greedy ids come back in the tokenizer's vocabulary, and from the subset (an id
    # outside it has 1/143,617 of the "other" row's probability)
    assert all(0 <= t < 151_808 for t in tokens)
    assert set(tokens) <= set(saved["vocab_subset"]), tokens
