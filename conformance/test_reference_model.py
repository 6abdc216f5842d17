"""The whole model and the real train step against an independent float64 reference.

Every other numeric test checks one piece (a block, the map, the loss chunking) or compares
the model with itself (scan vs loop, cache vs full).  These compare the assembled model and
the step's loss and gradient with ``pythoncoder.testing.reference``, written from the spec
text and sharing no code with the model, so whole-model bugs fail here: layer ids off by one
(every layer would get the next layer's lambda_init), segment ids dropped by the step, EOS
masked out of the targets, the MTP mean taken over T instead of T-1.

Precision policy (see spec/README.md): the model runs in fp32 with matmuls at "highest"
precision, the reference in float64; tolerances are fp32 rounding, so they mean the same on
CPU, GPU (no TF32) and TPU (no bf16 passes).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pythoncoder.data.shards import segment_ids
from pythoncoder.data.tokenizer import EOS_ID
from pythoncoder.model import ModelConfig, build_model
from pythoncoder.testing import reference as ref
from pythoncoder.train.step import init_train_state, make_train_step, split_model


def _cfg(**kw) -> ModelConfig:
    base = dict(name="ref", vocab_size=512, hidden_size=48, num_layers=3, head_dim=8,
                intermediate_size=64, compute_dtype="float32", remat_policy="none",
                attn_block_size=8, loss_chunk_size=16, tpu_aligned=False, dropout_rate=0.0)
    base.update(kw)
    return ModelConfig(**base)


def _perturbed_model(cfg: ModelConfig, seed: int):
    """The model with parameters drawn well away from init, so that every part matters:
    unit-scale norms and lambda vectors, kernels large enough that attention moves h."""
    model = build_model(cfg, seed=seed)
    state = nnx.state(model, nnx.Param)
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = str(path[-2].key if isinstance(path[-1], jax.tree_util.GetAttrKey)
                   else path[-1].key)
        if name == "scale":
            v = 1.0 + 0.3 * rng.normal(size=x.shape)
        elif name.startswith("lambda_"):
            v = 0.3 * rng.normal(size=x.shape)
        elif name == "embedding":
            v = rng.normal(size=x.shape)
        else:
            v = rng.normal(size=x.shape) / np.sqrt(x.shape[-2] if x.ndim >= 2 else 1)
        return jnp.asarray(v, jnp.float32)

    nnx.update(model, jax.tree_util.tree_map_with_path(draw, state))
    return model


def _rows(rng, B, T1, vocab, eos_every=5):
    """Token rows with EOS every few positions (several documents per row)."""
    rows = rng.integers(0, min(vocab, EOS_ID), size=(B, T1))
    rows[:, eos_every - 1::eos_every] = EOS_ID if vocab > EOS_ID else vocab - 1
    return rows.astype(np.int32)


@pytest.mark.req("ARCH-04", "DIFF-01", "DIFF-03", "DIFF-04", "MTP-01", "ROPE-01")
@pytest.mark.parametrize("segmented", [False, True])
def test_whole_model_matches_float64_reference(segmented):
    cfg = _cfg()
    model = _perturbed_model(cfg, seed=3)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(2, 13)).astype(np.int32)
    seg = np.sort(rng.integers(1, 4, size=(2, 13)), axis=1).astype(np.int32) if segmented \
        else None
    with jax.default_matmul_precision("highest"):
        h, _ = model.hidden_states(jnp.asarray(tokens), segment_ids_BT=None if seg is None
                                   else jnp.asarray(seg))
        got = np.asarray(model.logits(h))
        got_mtp = np.asarray(model.mtp_logits(h[:, :-1], jnp.asarray(tokens[:, 1:])))
    p = ref.flat_params(nnx.state(model, nnx.Param))
    with jax.enable_x64(True):
        p64 = {k: jnp.asarray(v, jnp.float64) for k, v in p.items()}
        h_ref = ref.hidden_states(p64, cfg, jnp.asarray(tokens),
                                  None if seg is None else jnp.asarray(seg))
        want = np.asarray(ref.logits(p64, cfg, h_ref))
        want_mtp = np.asarray(ref.mtp_logits(p64, cfg, h_ref[:, :-1], jnp.asarray(tokens[:, 1:])))
    assert np.abs(want).max() > 1.0  # logits of real size, not a near-zero comparison
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_mtp, want_mtp, rtol=1e-4, atol=1e-4)


@pytest.mark.req("TRAIN-03", "DATA-01", "MTP-01")
def test_train_step_loss_and_gradient_match_float64_reference():
    """The real step on packed rows with EOS and segment ids: its loss is the reference
    CE_main + 0.1 CE_mtp (means over B*T and B*(T-1) targets, EOS included), and the
    gradient it hands the optimizer is the reference gradient."""
    cfg = _cfg(vocab_size=151_808, hidden_size=32, num_layers=2, loss_chunk_size=32)
    model = _perturbed_model(cfg, seed=5)
    rows = _rows(np.random.default_rng(1), 4, 17, cfg.vocab_size)
    seg = segment_ids(rows)
    assert (rows[:, 1:] == EOS_ID).sum() >= 8 and seg.max() >= 4  # EOS targets, documents
    graphdef, _ = split_model(model)
    # an "optimizer" that keeps the gradient it is given as its state
    keep_grads = optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda g, _s, _p=None: (jax.tree.map(jnp.zeros_like, g), g))
    state = init_train_state(model, keep_grads)
    step = jax.jit(make_train_step(graphdef, keep_grads, mtp_weight=0.1))
    batch = {"tokens": jnp.asarray(rows.reshape(2, 2, 17)),
             "segment_ids": jnp.asarray(seg.reshape(2, 2, 17))}
    with jax.default_matmul_precision("highest"):
        new, metrics = step(state, batch, jax.random.PRNGKey(0))
    p = ref.flat_params(state.params)
    with jax.enable_x64(True):
        p64 = {k: jnp.asarray(v, jnp.float64) for k, v in p.items()}
        (want_loss, (main, mtp)), want_grad = jax.value_and_grad(
            lambda q: ref.loss(q, cfg, jnp.asarray(rows), jnp.asarray(seg), 0.1),
            has_aux=True)(p64)
        want_grad = {k: np.asarray(v) for k, v in want_grad.items()}
    np.testing.assert_allclose(float(metrics["loss"]), float(want_loss), rtol=2e-6, atol=0)
    got_grad = ref.flat_params(new.opt_state)
    assert set(got_grad) == set(want_grad)
    for k, g in want_grad.items():  # fp32 accumulation error, relative to the leaf's size
        np.testing.assert_allclose(got_grad[k], g, rtol=0, atol=1e-5 * np.abs(g).max() + 1e-9,
                                   err_msg=k)
    # the comparison is sensitive to the parts that the bugs above would change
    assert abs(float(mtp)) > 1.0 and abs(float(main)) > 1.0
