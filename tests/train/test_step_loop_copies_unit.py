"""The accumulation loop differentiates with respect to compute-dtype copies of the
kernels and the embedding (``step.loop_copy``), so the fp32 parameters are not held beside
them in the loop (issue 25 item 6).  The update must still be the one from gradients taken
with respect to the fp32 parameters, summed over the micro-batches in fp32."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pythoncoder.model import ModelConfig, build_model
from pythoncoder.train.step import TrainState, loop_copy, make_loss_fn, make_train_step, split_model

CFG = ModelConfig(name="micro", vocab_size=512, hidden_size=64, num_layers=2, head_dim=16,
                  intermediate_size=128, compute_dtype="bfloat16", remat_policy="none",
                  attention_impl="reference", attn_block_size=32, loss_chunk_size=64,
                  tpu_aligned=False)


def test_loop_copies_are_the_kernels_and_the_embedding():
    params = nnx.state(build_model(CFG), nnx.Param)
    chosen = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)
              if loop_copy(p)}
    names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    expected = {n for n in names if n.startswith("['embed']")
                or (n.startswith(("['blocks']", "['mtp']")) and "['kernel']" in n)}
    assert chosen == expected
    assert not any("lm_head" in n or "scale" in n or "lambda" in n for n in chosen)
    assert len(chosen) == 9  # q, k, v, o, gate, up, down (stacked), the MTP proj, embedding


def test_update_equals_fp32_gradients_summed_over_micro_batches():
    model = build_model(CFG)
    graphdef, params = split_model(model)
    tx = optax.sgd(1.0)  # new params = params - summed gradient
    step = jax.jit(make_train_step(graphdef, tx, mtp_weight=0.3, deterministic=True))
    state_opt = tx.init(params)
    state = TrainState(params=params, opt_state=state_opt, step=jnp.zeros((), jnp.int32),
                       skipped=jnp.zeros((), jnp.int32))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 2, 33)), jnp.int32)
    batch = {"tokens": tokens, "segment_ids": jnp.ones_like(tokens)}
    new_state, metrics = step(state, batch, jax.random.key(0))
    assert bool(metrics["finite"])

    # Reference: gradients with respect to the fp32 parameters, summed in fp32.
    loss_fn = make_loss_fn(graphdef, 0.3)
    main_norm, mtp_norm = jnp.float32(2 * 2 * 32), jnp.float32(2 * 2 * 31)
    grad = jax.jit(jax.grad(lambda p, m: loss_fn(p, m, None, True, main_norm, mtp_norm)[0]))
    ref = jax.tree.map(jnp.zeros_like, params)
    for i in range(2):
        g = grad(params, {"tokens": tokens[i], "segment_ids": batch["segment_ids"][i]})
        ref = jax.tree.map(jnp.add, ref, g)

    got = jax.tree.map(lambda old, new: old - new, params, new_state.params)
    for (path, r), g in zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree.leaves(got),
                            strict=True):
        scale = float(jnp.max(jnp.abs(r)))
        assert scale > 0, jax.tree_util.keystr(path)
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0,
                                   atol=2e-2 * scale, err_msg=jax.tree_util.keystr(path))


def _capture_grads() -> optax.GradientTransformation:
    """An 'optimizer' that leaves the parameters alone and keeps the gradient it was given
    as its state: the step's accumulated gradient, exactly, in the dtype it was summed in."""
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def _accumulated(accum: int, micro: dict) -> dict:
    model = build_model(CFG)
    graphdef, params = split_model(model)
    tx = _capture_grads()
    step = jax.jit(make_train_step(graphdef, tx, mtp_weight=0.3, deterministic=True))
    state = TrainState(params=params, opt_state=tx.init(params),
                       step=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32))
    batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (accum, *x.shape)), micro)
    new_state, metrics = step(state, batch, jax.random.key(0))
    assert bool(metrics["finite"])
    return new_state.opt_state


def test_the_accumulator_sums_in_fp32_under_bf16_compute():
    """Eight identical micro-batches under bf16 compute: every micro-step's gradient is the
    same g (the token norms scale by powers of two), so the fp32 sum is 8 g, which two
    identical micro-batches also give (2 g at a norm four times smaller) up to fp32
    rounding.  A sum kept in bf16 rounds 3 g, 5 g, 7 g to 8 bits and misses by ~2^-9 (the
    control computes that sum and shows the tolerance sees it)."""
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 33)), jnp.int32)
    micro = {"tokens": tokens, "segment_ids": jnp.ones_like(tokens)}
    eight, two = _accumulated(8, micro), _accumulated(2, micro)
    worst_bf16 = 0.0
    for (path, g8), g2 in zip(jax.tree_util.tree_leaves_with_path(eight), jax.tree.leaves(two),
                              strict=True):
        name = jax.tree_util.keystr(path)
        assert g8.dtype == jnp.float32, name  # the accumulator's dtype
        g8, g2 = np.asarray(g8, np.float64), np.asarray(g2, np.float64)
        scale = np.max(np.abs(g2))
        assert scale > 0, name
        np.testing.assert_allclose(g8, g2, rtol=0, atol=1e-6 * scale, err_msg=name)
        # control: the same eight gradients summed in bf16
        g = jnp.asarray(g2 / 2, jnp.float32).astype(jnp.bfloat16)
        acc = jnp.zeros_like(g)
        for _ in range(8):
            acc = acc + g
        worst_bf16 = max(worst_bf16, float(np.max(np.abs(np.asarray(acc, np.float64)
                                                         - 8 * np.asarray(g, np.float64))))
                         / (8 * float(np.max(np.abs(np.asarray(g, np.float64))))))
    assert worst_bf16 > 1e-4  # a bf16 accumulator would fail the tolerance above
