"""complete() and ``pythoncoder generate`` over a micro model and a toy tokenizer."""

import json
from types import SimpleNamespace

import pytest

import pythoncoder.infer.api as api
from pythoncoder.cli import main as cli_main
from pythoncoder.infer.api import TextGenerator, complete
from pythoncoder.infer.engine import Engine
from pythoncoder.model import ModelConfig, build_model

PIECES = ["\n", "def", "x", " ", "#", "=", "1", "(", ")", ":", "y", "  "]


class ToyTokenizer:
    """Characters <-> ids through a 12-piece table (ids wrap modulo the table)."""

    def encode(self, text, add_special_tokens=False):
        return SimpleNamespace(ids=[ord(c) % 500 for c in text])

    def decode(self, ids, skip_special_tokens=True):
        return "".join(PIECES[i % len(PIECES)] for i in ids)


@pytest.fixture(scope="module")
def toy_generator():
    cfg = ModelConfig(name="micro", vocab_size=512, hidden_size=32, num_layers=1, head_dim=8,
                      num_q_subheads=4, num_kv_subheads=2, intermediate_size=32,
                      compute_dtype="float32", remat_policy="none", tpu_aligned=False,
                      attn_block_size=8)
    return TextGenerator(Engine(build_model(cfg, seed=1)), ToyTokenizer())


@pytest.fixture
def patched(monkeypatch, toy_generator):
    calls = []

    def fake_load(run_dir, yarn=False, step=None, weights=None):
        calls.append((run_dir, yarn, step))
        return toy_generator

    monkeypatch.setattr(api, "load_generator", fake_load)
    return calls


def test_complete_shapes_greedy_and_sampled(patched):
    prompts = ["def f(x):", "y = 1", "#"]
    greedy = complete("RUN", prompts, n=3, temperature=0.0, max_new_tokens=8, stop=[], seed=0,
                      batch_size=4)
    assert [len(c) for c in greedy] == [3, 3, 3]
    assert all(len(set(c)) == 1 for c in greedy)  # greedy: decoded once, repeated
    sampled = complete("RUN", prompts, n=4, temperature=1.0, max_new_tokens=8, stop=[], seed=0,
                       batch_size=4)
    assert [len(c) for c in sampled] == [4, 4, 4]
    assert any(len(set(c)) > 1 for c in sampled)
    again = complete("RUN", prompts, n=4, temperature=1.0, max_new_tokens=8, stop=[], seed=0,
                     batch_size=4)
    assert again == sampled  # seeded
    assert patched[0] == ("RUN", False, None)


def test_complete_cuts_at_stops(patched):
    stops = ["\ndef", "\n#", "x"]
    out = complete("RUN", ["def f(x):"] * 2, n=2, temperature=1.0, max_new_tokens=30, stop=stops,
                   seed=1, batch_size=4)
    for row in out:
        for text in row:
            assert not any(s in text for s in stops)


def test_cli_json(patched, capsys):
    rc = cli_main(["generate", "--prompt", "def f(x):", "--max-new-tokens", "5", "--json",
                   "--speculative", "-n", "4", "--temperature", "1.0"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["completions"]) == 4 and all(len(t) == 5 for t in out["tokens"])
    assert out["stats"]["speculative"] is True
    assert 0.0 <= out["stats"]["acceptance_rate"] <= 1.0


def test_cli_streams_the_final_text(patched, capsys):
    rc = cli_main(["generate", "--prompt", "y = 1", "--max-new-tokens", "12",
                   "--stop", "\\n#"])
    assert rc == 0
    cap = capsys.readouterr()
    free = complete("RUN", ["y = 1"], n=1, temperature=0.0, max_new_tokens=12, stop=["\n#"],
                    seed=0)
    assert cap.out == free[0][0] + "\n"
    assert "tok/s" in cap.err


def test_cli_refuses_a_bad_run_dir(tmp_path, capsys):
    api.load_generator.cache_clear()
    rc = cli_main(["generate", "--run", str(tmp_path / "missing"), "--prompt", "x"])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
