"""A vocabulary subset (``ModelConfig.vocab_subset``): rows, loss and full-vocab logits."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from pythoncoder.data.shards import frequent_ids
from pythoncoder.model import ModelConfig, build_model
from pythoncoder.model.config import ConfigError
from pythoncoder.model.loss import lm_loss
from pythoncoder.model.vocab import (
    full_vocab_logits,
    greedy_ids,
    other_log_share,
    row_ids,
    to_rows,
)

V = 512
SUBSET = tuple(range(0, 200, 2)) + (300, 301, 499)  # 103 ids -> 104 rows


def _cfg(**kw) -> ModelConfig:
    return ModelConfig.preset("tiny", num_layers=2, vocab_size=V, vocab_subset=SUBSET,
                              dropout_rate=0.0, **kw)


@pytest.fixture(scope="module")
def model():
    return build_model(_cfg(), seed=1)


def test_rows_are_subset_plus_other(model):
    cfg = model.cfg
    assert cfg.model_vocab_rows == len(SUBSET) + 1
    assert model.embed.embedding.shape == (len(SUBSET) + 1, cfg.hidden_size)
    assert model.lm_head.kernel.shape == (cfg.hidden_size, len(SUBSET) + 1)
    full = ModelConfig.preset("tiny", num_layers=2, vocab_size=V)
    assert full.model_vocab_rows == V


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, V - 1), min_size=1, max_size=64))
def test_to_rows_matches_a_dict_lookup(ids):
    cfg = _cfg()
    naive = {t: r + 1 for r, t in enumerate(SUBSET)}
    got = np.asarray(to_rows(cfg, jnp.asarray(ids, jnp.int32)))
    assert got.tolist() == [naive.get(t, 0) for t in ids]


def test_full_vocab_logits_are_a_distribution_with_other_split_evenly(model):
    cfg = model.cfg
    rows = jax.random.normal(jax.random.key(0), (3, cfg.model_vocab_rows)) * 3.0
    full = np.asarray(full_vocab_logits(cfg, rows), np.float64)
    rows64 = np.asarray(rows, np.float64)
    # float64 naive reference: p(id) = p_row(id) for subset ids, p_row(0) / n_other else
    p_rows = np.exp(rows64 - rows64.max(-1, keepdims=True))
    p_rows /= p_rows.sum(-1, keepdims=True)
    n_other = V - len(SUBSET)
    expect = np.full((3, V), 0.0)
    expect[:] = p_rows[:, :1] / n_other
    expect[:, list(SUBSET)] = p_rows[:, 1:]
    p_full = np.exp(full - full.max(-1, keepdims=True))
    p_full /= p_full.sum(-1, keepdims=True)
    assert_allclose(p_full, expect, rtol=1e-5, atol=1e-12)
    assert_allclose(p_full.sum(-1), 1.0, rtol=0, atol=1e-9)
    assert other_log_share(cfg) == pytest.approx(np.log(n_other), rel=1e-12)


def test_loss_is_the_full_vocabulary_cross_entropy_of_logits(model):
    """Training loss (with the "other" share) == CE of ``logits()`` over all V ids, main
    and MTP, for targets inside and outside the subset."""
    tokens = jax.random.randint(jax.random.key(2), (2, 33), 0, V)
    tokens = tokens.at[:, ::3].set(jnp.asarray(SUBSET[5]))  # a mix of subset and other
    x, y = tokens[:, :-1], tokens[:, 1:]
    parts = lm_loss(model, x, y, mtp_weight=0.3)
    h, _ = model.hidden_states(x)
    lp = jax.nn.log_softmax(model.logits(h).astype(jnp.float64 if jax.config.x64_enabled
                                                  else jnp.float32), -1)
    ce = -jnp.take_along_axis(lp, y[..., None], -1)[..., 0]
    assert int(jnp.sum(to_rows(model.cfg, y) == 0)) > 0  # some targets are "other"
    assert_allclose(float(parts.main), float(ce.mean()), rtol=1e-5, atol=1e-6)
    lpm = jax.nn.log_softmax(model.mtp_logits(h[:, :-1], y[:, :-1]), -1)
    cem = -jnp.take_along_axis(lpm, y[:, 1:, None], -1)[..., 0]
    assert_allclose(float(parts.mtp), float(cem.mean()), rtol=1e-5, atol=1e-6)
    assert_allclose(float(parts.total), float(ce.mean() + 0.3 * cem.mean()), rtol=1e-5,
                    atol=1e-6)


def test_ids_outside_the_subset_share_the_other_embedding(model):
    outside = [i for i in range(V) if i not in SUBSET][:4]
    e = model.embed_tokens(jnp.asarray([outside + [SUBSET[0]]]))
    table = model.embed.embedding[...]
    for j in range(4):
        assert_allclose(np.asarray(e[0, j]), np.asarray(table[0]), rtol=0, atol=0)
    assert_allclose(np.asarray(e[0, 4]), np.asarray(table[1]), rtol=0, atol=0)


def test_greedy_generation_emits_subset_ids_only_and_speculation_agrees(model):
    """Prompts may hold any id; greedy output is subset ids (each "other" id has 1/n of
    the "other" row's probability), and MTP self-speculation gives the same tokens."""
    from pythoncoder.infer.engine import Engine

    engine = Engine(model)
    prompts = [[SUBSET[3], 7, 300], [401, 1, 2, 3, 5]]
    plain = engine.generate(prompts, max_new_tokens=12, eos_id=None).tokens
    assert all(len(t) == 12 and set(t) <= set(SUBSET) for t in plain)
    spec = engine.generate(prompts, max_new_tokens=12, eos_id=None, speculative=True).tokens
    assert spec == plain


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([SUBSET, (1, 2, 3, 40, 41, 500), (0, 1, 2, 3, 9)]),
       st.integers(1, V), st.integers(0, 2**31 - 1))
def test_greedy_ids_equal_the_full_vocabulary_argmax(subset, num_real, seed):
    """The K-row greedy pick == argmax of the padding-masked 512-wide logits: integer-valued
    logits make ties among rows, a large "other" logit makes the other ids win, and
    num_real may cut off subset ids and the first "other" id."""
    from pythoncoder.infer.sampling import mask_padding

    cfg = _cfg().replace(vocab_subset=subset)
    rng = np.random.default_rng(seed)
    rows = rng.integers(-3, 4, size=(6, cfg.model_vocab_rows)).astype(np.float32)
    rows[::2, 0] += 12.0  # "other" minus log(n_other) beats every subset row
    # row 1: "other" ties exactly with the best subset row, the smallest subset id
    share = np.float32(other_log_share(cfg))
    rows[1, 0] = np.float32(3.0) + share
    rows[1, 1:] = np.minimum(rows[1, 1:], 2.0)
    rows[1, 1] = rows[1, 0] - share  # the same fp32 subtraction the model does
    rows = jnp.asarray(rows)
    want = jnp.argmax(mask_padding(full_vocab_logits(cfg, rows), num_real), axis=-1)
    assert np.asarray(greedy_ids(cfg, rows, num_real)).tolist() == np.asarray(want).tolist()
    ids = row_ids(cfg)
    assert ids[0] not in subset and all(i in subset for i in range(ids[0]))
    assert ids[1:].tolist() == list(subset)


def test_engine_greedy_picks_over_rows_give_the_full_vocabulary_tokens(model, monkeypatch):
    """Decode, speculation and the on-device loop choose greedy tokens over the K rows;
    forcing the 512-wide full-vocabulary argmax instead gives the same tokens."""
    import pythoncoder.infer.engine as E
    from pythoncoder.infer.sampling import sample

    prompts = [[SUBSET[3], 7, 300], [401, 1, 2, 3, 5]]

    def run():
        E._programs.cache_clear()
        engine = E.Engine(model)
        return [engine.generate(prompts, max_new_tokens=10, eos_id=None, speculative=s,
                                device_loop=d).tokens
                for s in (False, True) for d in (False, True)]

    rows_pick = run()
    monkeypatch.setattr(E, "_choose", lambda m, rows, key, sampling, num_real: sample(
        full_vocab_logits(m.cfg, rows), key, sampling, num_real))
    full_pick = run()
    E._programs.cache_clear()
    assert rows_pick == full_pick
    assert all(t == rows_pick[0] for t in rows_pick)


def test_config_round_trips_through_json_and_validates():
    cfg = _cfg()
    again = ModelConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert again == cfg and isinstance(again.vocab_subset, tuple)
    assert "vocab_subset" not in repr(cfg)  # 8k ids would flood every log line
    with pytest.raises(ConfigError, match="vocab_subset"):
        _cfg().replace(vocab_subset=(5, 3))
    with pytest.raises(ConfigError, match="vocab_subset"):
        _cfg().replace(vocab_subset=(3, V))
    with pytest.raises(ConfigError, match="vocab_subset"):
        _cfg().replace(vocab_subset=tuple(range(V)))
    with pytest.raises(ConfigError, match="model vocabulary rows"):
        ModelConfig.preset("1b", vocab_subset=tuple(range(100)))
    ModelConfig.preset("1b", vocab_subset=tuple(range(255)))  # 256 rows: aligned


def test_frequent_ids_picks_the_most_used_train_ids(tmp_path):
    from pythoncoder.data.shards import FORMAT, write_manifest, write_shard

    rng = np.random.default_rng(0)
    rows = rng.choice([5, 9, 9, 9, 40, 40, 7], size=(16, 9)).astype(np.uint32)
    entry = write_shard(tmp_path / "train-00000.npy", rows)
    write_manifest(tmp_path, {"format": FORMAT, "seq_len": 8,
                              "splits": {"train": {"shards": [entry]}}})
    assert frequent_ids(tmp_path, 3) == (9, 40)
    assert set(frequent_ids(tmp_path, 100)) == {5, 7, 9, 40}


def test_jitted_train_step_learns_with_a_subset():
    """A few optimizer steps on a repeating sequence: the subset model's loss falls."""
    import optax

    cfg = _cfg()
    model = build_model(cfg, seed=0)
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    tokens = jnp.asarray([[SUBSET[i % 7] for i in range(17)] + [401]] * 2)

    @nnx.jit
    def step(model, opt):
        loss, grads = nnx.value_and_grad(
            lambda m: lm_loss(m, tokens[:, :-1], tokens[:, 1:]).total)(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(15)]
    assert losses[-1] < losses[0] - 1.0


def test_export_round_trip_keeps_the_subset(model, tmp_path):
    """safetensors + config.json carry the subset: the loaded model gives identical logits."""
    pytest.importorskip("safetensors")
    from pythoncoder.export import export_weights, load_weights

    class _NoTokenizer:
        def save(self, path: str) -> None:
            with open(path, "w") as f:
                f.write("{}")

    export_weights(model, model.cfg, tmp_path, dtype="float32", tokenizer=_NoTokenizer())
    loaded, cfg = load_weights(tmp_path)
    assert cfg.vocab_subset == SUBSET and loaded.lm_head.kernel.shape[1] == len(SUBSET) + 1
    tokens = jnp.asarray([[SUBSET[1], 7, 300, 401, 2]])
    assert_allclose(np.asarray(loaded(tokens)), np.asarray(model(tokens)), rtol=0, atol=0)


def test_resume_accepts_the_same_subset_and_names_a_different_one(tmp_path):
    """run.json stores the subset as a JSON list; the same subset resumes, another refuses
    in one short line (not 8k ids)."""
    from pythoncoder.checkpoint import CheckpointError, write_run_files
    from pythoncoder.train.config import TrainConfig
    from pythoncoder.train.run import check_resume

    cfg, tcfg = _cfg(), TrainConfig(seq_len=16, micro_batch=2, accum_steps=1)
    write_run_files(tmp_path, cfg, tcfg, {"total_steps": 1})
    check_resume(tmp_path, cfg, tcfg, None)  # no error
    with pytest.raises(CheckpointError, match=r"vocab_subset differs.*keeps 103 token ids, "
                                              r"this command 102") as e:
        check_resume(tmp_path, cfg.replace(vocab_subset=SUBSET[:-1]), tcfg, None)
    assert len(str(e.value)) < 300
    # a run.json written before the field existed resumes with the full vocabulary only
    run = json.loads((tmp_path / "run.json").read_text())
    del run["model"]["vocab_subset"]
    (tmp_path / "run.json").write_text(json.dumps(run))
    check_resume(tmp_path, cfg.replace(vocab_subset=()), tcfg, None)
    with pytest.raises(CheckpointError, match="keeps 0 token ids, this command 103"):
        check_resume(tmp_path, cfg, tcfg, None)
