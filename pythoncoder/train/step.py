"""The jitted train step: in-jit gradient accumulation, one AdamW update, non-finite guard.

The state is functional (``TrainState``): the model's fp32 ``nnx.Param`` state, the optax
state and counters.  ``make_train_step`` returns a function of
``(state, batch, dropout_key) -> (state, metrics)`` where ``batch["tokens"]`` has shape
``(accum_steps, micro_batch, seq_len + 1)``.  Micro-batches are scanned inside the one
jitted function (no host round-trip per micro-batch); their gradients are summed with
token weights so the update equals the one from the whole batch at once (TRAIN-03).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from pythoncoder.model import PythonCoder, lm_loss


@struct.dataclass
class TrainState:
    params: Any  # nnx.State of nnx.Param, fp32
    opt_state: Any
    step: jax.Array  # optimizer updates applied
    skipped: jax.Array  # non-finite updates skipped so far (TRAIN-08)


def init_train_state(model: PythonCoder, tx: optax.GradientTransformation) -> TrainState:
    params = nnx.state(model, nnx.Param)
    return TrainState(params=params, opt_state=tx.init(params),
                      step=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32))


def split_model(model: PythonCoder) -> tuple[nnx.GraphDef, Any]:
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, params


def _inputs(tokens: jax.Array, segment_ids: jax.Array | None):
    seg = None if segment_ids is None else segment_ids[..., :-1]
    return tokens[..., :-1], tokens[..., 1:], seg


def make_loss_fn(graphdef: nnx.GraphDef, mtp_weight: float):
    """loss(params, micro_batch, key, deterministic, main_norm, mtp_norm) -> (loss, parts)."""

    def loss_fn(params, micro, key, deterministic: bool, main_norm, mtp_norm):
        model = nnx.merge(graphdef, params)
        x, y, seg = _inputs(micro["tokens"], micro.get("segment_ids"))
        parts = lm_loss(model, x, y, segment_ids_BT=seg, deterministic=deterministic,
                        dropout_key=key)
        loss = parts.main_sum / main_norm + mtp_weight * parts.mtp_sum / mtp_norm
        return loss, parts

    return loss_fn


def loop_copy(path) -> bool:
    """Whether the accumulation loop takes this parameter's compute-dtype copy instead of
    the fp32 parameter: the layer and MTP projection kernels and the embedding table, which
    the model only ever reads cast to the compute dtype (``nnx.Linear``/``nnx.Embed`` with
    ``dtype``).  A kernel read once gets bitwise the gradient it had (the cast's transpose
    only widens the same values); the embedding, read twice (input and MTP), has its two
    compute-dtype cotangents summed before the widening instead of after.  Norm scales,
    lambdas and the head (whose loss VJP accumulates its gradient in fp32) stay fp32."""
    keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return (keys[0] in ("blocks", "mtp") and "kernel" in keys) or keys[0] == "embed"


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *,
                    mtp_weight: float, deterministic: bool = False):
    """The step function (not jitted; wrap it with ``jax.jit`` and shardings)."""
    loss_fn = make_loss_fn(graphdef, mtp_weight)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict, dropout_key: jax.Array):
        tokens = batch["tokens"]
        accum, micro_b, row = tokens.shape
        t = row - 1
        # token weights for the whole batch (no padding in packed rows, DATA-01)
        main_norm = jnp.float32(accum * micro_b * t)
        mtp_norm = jnp.float32(accum * micro_b * (t - 1))

        # An accumulation loop reads compute-dtype copies, not the fp32 parameters beside
        # them: the design defaults (1b, 8x2048, accumulation 8, remat full) compile for a
        # v6e in 30.32 GB instead of 33.63 GB (TRAIN-07; issue 25 item 6).  A single
        # micro-step has no loop to hold them across (and the L4's compile of it took 20%
        # more FLOPs with the copies), so it differentiates the parameters themselves.
        params = state.params
        if accum > 1:
            dtype = nnx.merge(graphdef, state.params).cfg.dtype()
            params = jax.tree_util.tree_map_with_path(
                lambda path, p: p.astype(dtype) if loop_copy(path) else p, state.params)

        def micro_step(carry, xs):
            grads_acc, loss_acc = carry
            i, micro = xs
            key = jax.random.fold_in(dropout_key, i)
            (loss, _), grads = grad_fn(params, micro, key, deterministic, main_norm, mtp_norm)
            grads_acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), grads_acc, grads)
            return (grads_acc, loss_acc + loss), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grads, loss), _ = jax.lax.scan(micro_step, (zeros, jnp.zeros((), jnp.float32)),
                                        (jnp.arange(accum), batch))
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        # TRAIN-08: a non-finite step leaves params and optimizer state untouched.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = TrainState(
            params=keep(new_params, state.params),
            opt_state=keep(new_opt, state.opt_state),
            step=state.step + finite.astype(jnp.int32),
            skipped=state.skipped + (~finite).astype(jnp.int32),
        )
        metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite}
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, mtp_weight: float):
    """Deterministic summed losses of one (micro_batch, seq_len+1) batch."""
    loss_fn = make_loss_fn(graphdef, mtp_weight)

    def eval_step(params, batch: dict):
        _, parts = loss_fn(params, batch, None, True, 1.0, 1.0)
        return {"main_sum": parts.main_sum, "main_count": parts.main_count,
                "mtp_sum": parts.mtp_sum, "mtp_count": parts.mtp_count}

    return eval_step
