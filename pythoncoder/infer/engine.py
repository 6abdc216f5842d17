"""KV-cache generation: prefill, a jitted one-token decode step, and MTP self-speculation.

Cache layout (INF-01).  One :class:`~pythoncoder.model.KVCache` serves prefill, decode and
verification: (layers, batch, slots, ...) in the model's GQA layout, preallocated to a
static length.  All rows share one write offset ``index`` (the model takes a scalar
``cache_index``); rows of different lengths are left-padded.  Each row also keeps an
``offset``: the number of its slots that hold no real token.  Such slots carry segment id
0, which real tokens (segment 1) never attend to, and a token in slot ``s`` gets RoPE
position ``s - offset``; so every row computes exactly what an unpadded run would.

Speculative decoding (INF-02).  With the last emitted token ``x`` not yet in the cache
and ``h`` the last block's output at the previous slot, the MTP module drafts ``d`` from
``(h, x)``; one forward over ``[x, d]`` verifies it.  Greedy: ``y = argmax p(.|x)``; if
``y == d`` both ``d`` and ``argmax p(.|x, d)`` are emitted, otherwise only ``y``.
Rollback is by offset: if every row rejects, ``index`` advances by one and slot
``index+1`` is simply overwritten next time; if only some rows reject, ``index`` advances
by two and each rejecting row marks the stale slot as a hole (segment 0, ``offset += 1``),
so rows accept and reject independently inside one batched forward.

Why greedy speculation gives the plain greedy tokens: the verify logits for ``x`` come
from the same weights, cache contents, positions and masks as a one-token decode of ``x``,
and the argmax is the same function of them.  The only difference is the row count of
the matmuls (B*2 vs B), which can change their tiling and so the last ulp or two of fp32
logits (bitwise equal in some shapes on XLA:CPU, not all).  Tokens can therefore differ
only on a greedy near-tie below that rounding (~1e-6 in fp32; wider in bf16, where any
speculative decoder shares the caveat).  The conformance suite checks token equality over
random models and the logit agreement bound.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pythoncoder.infer.sampling import (
    EOS_ID,
    GREEDY,
    SamplingConfig,
    num_sampleable,
    probabilities,
    sample,
    speculative_accept,
)
from pythoncoder.model import KVCache, ModelConfig, PythonCoder
from pythoncoder.model.vocab import full_vocab_logits, greedy_ids

PAD_TOKEN = 0  # any id works: left-pad slots are masked by segment id 0
SLOT_ALIGN = 128
PROMPT_ALIGN = 16


class DecodeState(NamedTuple):
    """Everything a decode step carries; donated to each step so the cache is updated in place.

    ``pending_B`` is the last emitted token, not yet written to the cache; ``hidden_BD`` is
    the last block's output at slot ``index - 1`` (the MTP module's input).
    """

    cache: KVCache
    index: jax.Array  # int32 scalar: the next free slot, shared by all rows
    offset_B: jax.Array  # int32: slots without a real token (left pads + rollback holes)
    pending_B: jax.Array
    hidden_BD: jax.Array
    key: jax.Array


class StepOutput(NamedTuple):
    """What one step emits: ``tokens[b, :count[b]]``; ``accepted`` only when speculating."""

    tokens_BK: jax.Array
    count_B: jax.Array
    accepted_B: jax.Array | None


class _Rows:
    """The host side of one ``generate`` call: each row's tokens so far and why it
    stopped, filled from each step's output in order (EOS dropped; ``max_new_tokens``,
    the stop ids and ``stop`` end a row after the token that ends it), and the counts
    (``stats``)."""

    def __init__(self, B: int, max_new_tokens: int, eos_id: int | None, stop_ids: set[int],
                 stop: Callable[[int, list[int]], bool] | None,
                 on_tokens: Callable[[int, list[int]], None] | None) -> None:
        self.max_new_tokens, self.eos_id, self.stop_ids = max_new_tokens, eos_id, stop_ids
        self.stop, self.on_tokens = stop, on_tokens
        self.gen: list[list[int]] = [[] for _ in range(B)]
        self.reasons: list[str | None] = [None] * B
        self.stats: dict[str, Any] = dict(batch=B, prompt_tokens=0, steps=0, drafted=0,
                                          accepted=0, speculative=False)

    def active(self) -> list[int]:
        return [b for b, r in enumerate(self.reasons) if r is None]

    def absorb(self, out: StepOutput, is_step: bool = True) -> None:
        toks, counts = np.asarray(out.tokens_BK), np.asarray(out.count_B)
        acc = None if out.accepted_B is None else np.asarray(out.accepted_B)
        if is_step and self.active():
            self.stats["steps"] += 1  # steps whose output was used (not the overrun one)
        for b in self.active():
            if acc is not None:
                self.stats["drafted"] += 1
                self.stats["accepted"] += int(acc[b])
            new = self._take(b, toks[b, :counts[b]].tolist())
            if new and self.on_tokens is not None:
                self.on_tokens(b, new)

    def _take(self, b: int, tokens: list[int]) -> list[int]:
        new: list[int] = []
        gen = self.gen[b]
        for t in tokens:
            if self.eos_id is not None and t == self.eos_id:
                self.reasons[b] = "eos"
                break
            gen.append(t)
            new.append(t)
            if len(gen) >= self.max_new_tokens:
                self.reasons[b] = "length"
                break
            if t in self.stop_ids or (self.stop is not None and self.stop(b, gen)):
                self.reasons[b] = "stop"
                break
        return new


@dataclasses.dataclass
class GenerationResult:
    """Generated ids per row (prompt excluded, EOS excluded) and why each row stopped."""

    tokens: list[list[int]]
    finish_reasons: list[str]  # "eos" | "stop" | "length"
    stats: dict[str, Any]


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def left_pad(prompts: Sequence[Sequence[int]], length: int | None = None,
             pad_id: int = PAD_TOKEN) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (B, P) int32, pads (B,) int32): prompts right-aligned in a (B, P) block."""
    longest = max(len(p) for p in prompts)
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"prompt length {longest} exceeds the padded length {length}")
    out = np.full((len(prompts), length), pad_id, np.int32)
    pads = np.zeros((len(prompts),), np.int32)
    for i, p in enumerate(prompts):
        pads[i] = length - len(p)
        out[i, pads[i]:] = np.asarray(p, np.int32)
    return out, pads


# ---- the model passes (pure functions of a merged model) ---------------------------------
def cached_forward(model: PythonCoder, cache: KVCache, tokens_BT: jax.Array, index: jax.Array,
                   offset_B: jax.Array, segment_ids_BT: jax.Array) -> tuple[jax.Array, KVCache]:
    """Write ``tokens`` at slots ``index..index+T-1``; positions are ``slot - offset``."""
    B, T = tokens_BT.shape
    slots_1T = (index + jnp.arange(T, dtype=jnp.int32)).reshape(1, T)
    positions_BT = jnp.maximum(slots_1T - offset_B.reshape(B, 1), 0)
    return model.hidden_states(tokens_BT, positions_BT=positions_BT,
                               segment_ids_BT=segment_ids_BT, cache=cache, cache_index=index)


def _row_logits(model: PythonCoder, h_BTD: jax.Array) -> jax.Array:
    """fp32 logits over the model's rows (the full vocabulary unless it has a subset)."""
    return model.head(model.final_norm(h_BTD))


def _choose(model: PythonCoder, rows_BK: jax.Array, key: jax.Array, sampling: SamplingConfig,
            num_real: int) -> jax.Array:
    """``sample(full_vocab_logits(rows))``; a greedy pick on a vocabulary-subset model is
    made over its K rows (``greedy_ids``, the same token) instead of 151,808 logits."""
    if sampling.greedy and model.cfg.vocab_subset:
        return greedy_ids(model.cfg, rows_BK, num_real)
    return sample(full_vocab_logits(model.cfg, rows_BK), key, sampling, num_real)


def _prefill(model: PythonCoder, tokens_BP, pads_B, key, *, cache_len: int,
             sampling: SamplingConfig, num_real: int, all_logits: bool):
    B, P = tokens_BP.shape
    cache = model.init_cache(B, cache_len)
    seg_BP = (jnp.arange(P, dtype=jnp.int32).reshape(1, P) >= pads_B.reshape(B, 1)).astype(
        jnp.int32)
    h, cache = cached_forward(model, cache, tokens_BP, jnp.zeros((), jnp.int32), pads_B, seg_BP)
    rows = _row_logits(model, h if all_logits else h[:, -1:])
    logits = full_vocab_logits(model.cfg, rows)
    key, k = jax.random.split(key)
    first = _choose(model, rows[:, -1], k, sampling, num_real)
    state = DecodeState(cache, jnp.asarray(P, jnp.int32), pads_B, first, h[:, -1], key)
    return state, StepOutput(first.reshape(B, 1), jnp.ones((B,), jnp.int32), None), logits


def _decode(model: PythonCoder, state: DecodeState, *, sampling: SamplingConfig,
            num_real: int):
    B = state.pending_B.shape[0]
    h, cache = cached_forward(model, state.cache, state.pending_B.reshape(B, 1), state.index,
                              state.offset_B, jnp.ones((B, 1), jnp.int32))
    rows = _row_logits(model, h)[:, 0]
    logits = full_vocab_logits(model.cfg, rows)
    key, k = jax.random.split(state.key)
    token = _choose(model, rows, k, sampling, num_real)
    new = DecodeState(cache, state.index + 1, state.offset_B, token, h[:, 0], key)
    return new, StepOutput(token.reshape(B, 1), jnp.ones((B,), jnp.int32), None), logits


def _speculate(model: PythonCoder, state: DecodeState, *, sampling: SamplingConfig,
               num_real: int):
    B = state.pending_B.shape[0]
    key, k_draft, k_accept, k_next = jax.random.split(state.key, 4)
    x = state.pending_B.reshape(B, 1)
    draft_rows = model.head(model.mtp_hidden(state.hidden_BD.reshape(B, 1, -1), x))[:, 0]
    draft_logits = full_vocab_logits(model.cfg, draft_rows)
    draft = _choose(model, draft_rows, k_draft, sampling, num_real)
    both = jnp.concatenate([x, draft.reshape(B, 1)], axis=1)
    h, cache = cached_forward(model, state.cache, both, state.index, state.offset_B,
                              jnp.ones((B, 2), jnp.int32))
    rows = _row_logits(model, h)
    logits = full_vocab_logits(model.cfg, rows)
    if sampling.greedy:
        first = _choose(model, rows[:, 0], k_accept, sampling, num_real)
        accepted = first == draft
    else:
        accepted, first = speculative_accept(
            probabilities(logits[:, 0], sampling, num_real),
            probabilities(draft_logits, sampling, num_real), draft, k_accept)
    second = _choose(model, rows[:, 1], k_next, sampling, num_real)

    any_accepted = jnp.any(accepted)
    hole_B = any_accepted & ~accepted  # stale draft slot inside the kept range
    stale = state.index + 1
    seg = cache.segment_ids
    col = jax.lax.dynamic_slice_in_dim(seg, stale, 1, axis=2)
    col = jnp.where(hole_B.reshape(1, B, 1), 0, col)
    cache = cache._replace(segment_ids=jax.lax.dynamic_update_slice_in_dim(seg, col, stale,
                                                                           axis=2))
    new = DecodeState(
        cache=cache,
        index=state.index + jnp.where(any_accepted, 2, 1).astype(jnp.int32),
        offset_B=state.offset_B + hole_B.astype(jnp.int32),
        pending_B=jnp.where(accepted, second, first),
        hidden_BD=jnp.where(accepted.reshape(B, 1), h[:, 1], h[:, 0]),
        key=key,
    )
    out = StepOutput(jnp.stack([first, second], axis=1), jnp.where(accepted, 2, 1), accepted)
    return new, out, logits


class LoopOutput(NamedTuple):
    """What one on-device chunk emits: per step ``tokens[i, b, :count[i, b]]`` for
    ``i < steps``; ``speculated[i]`` says whether step ``i`` drafted (then ``accepted``)."""

    tokens_NBK: jax.Array
    count_NB: jax.Array
    accepted_NB: jax.Array
    speculated_N: jax.Array
    steps: jax.Array  # int32 scalar: steps run (< N when every row finished or no room)
    done_B: jax.Array


def _row_updates(tokens_BK, count_B, done_B, n_B, eos_id, max_new, stop_ids):
    """The host's per-token stop rules (EOS, length, stop token ids), vectorised over rows:
    a row is done after an EOS (not counted), its ``max_new``-th token, or a stop token."""
    for k in range(tokens_BK.shape[1]):
        t = tokens_BK[:, k]
        valid = (k < count_B) & ~done_B
        is_eos = valid & (t == eos_id)
        kept = valid & ~is_eos
        n_B = n_B + kept.astype(jnp.int32)
        stop = jnp.any(t.reshape(-1, 1) == stop_ids.reshape(1, -1), axis=1)
        done_B = done_B | is_eos | (kept & ((n_B >= max_new) | stop))
    return done_B, n_B


def _decode_loop(model: PythonCoder, state: DecodeState, done_B, n_B, eos_id, max_new,
                 stop_ids, *, steps: int, speculative: bool,
                 sampling: SamplingConfig, num_real: int):
    """Up to ``steps`` decode (or speculate) steps in one compiled program (while loops).

    Stops early when every row is done (``_row_updates``) or the cache has no room for
    another step.  Each step is exactly the per-step program's computation (same key
    splits, same cache writes, all rows computed whether done or not), so the tokens are
    those of the host loop; the host replays the recorded steps through the same
    bookkeeping (text stops, streaming, stats).
    """
    B = state.pending_B.shape[0]
    S = state.cache.k.shape[2]
    K = 2 if speculative else 1
    # A fresh module per traced branch: NNX refuses one module object inside two traces.
    graphdef, params = nnx.split(model)
    leaves, treedef = jax.tree.flatten(params)

    def fresh():
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))

    def plain(st):
        new, out, _ = _decode(fresh(), st, sampling=sampling,
                              num_real=num_real)
        toks = jnp.pad(out.tokens_BK, ((0, 0), (0, K - 1)))
        return new, toks, out.count_B, jnp.zeros((B,), bool)

    def spec(st):
        new, out, _ = _speculate(fresh(), st, sampling=sampling,
                                 num_real=num_real)
        return new, out.tokens_BK, out.count_B, out.accepted_B

    def until(room):  # run while steps remain, some row is live and `room` slots are free
        def cond(carry):
            i, st, done, _, _ = carry
            return (i < steps) & ~jnp.all(done) & (st.index + room <= S)
        return cond

    def stepping(step, speculated: bool):
        def body(carry):
            i, st, done, n, buf = carry
            st, toks, count, acc = step(st)
            done, n = _row_updates(toks, count, done, n, eos_id, max_new, stop_ids)
            buf = LoopOutput(buf.tokens_NBK.at[i].set(toks), buf.count_NB.at[i].set(count),
                             buf.accepted_NB.at[i].set(acc),
                             buf.speculated_N.at[i].set(jnp.asarray(speculated)),
                             buf.steps, buf.done_B)
            return i + 1, st, done, n, buf
        return body

    buf = LoopOutput(jnp.zeros((steps, B, K), jnp.int32), jnp.zeros((steps, B), jnp.int32),
                     jnp.zeros((steps, B), bool), jnp.zeros((steps,), bool),
                     jnp.zeros((), jnp.int32), done_B)
    carry = (jnp.zeros((), jnp.int32), state, done_B, n_B, buf)
    # Speculative steps while two cache slots are free, then plain steps for what is left
    # (at most one slot): the order the per-step host loop takes.  Two loops rather than a
    # lax.cond per step: a conditional over the cache made XLA copy the whole cache each
    # step, where one straight-line body updates it in place.
    if speculative:
        carry = jax.lax.while_loop(until(2), stepping(spec, True), carry)
    i, state, done_B, _, buf = jax.lax.while_loop(until(1), stepping(plain, False), carry)
    return state, buf._replace(steps=i, done_B=done_B)


@functools.lru_cache(maxsize=16)
def _programs(graphdef: Any) -> dict[str, Callable]:
    """Jitted passes for one model structure; parameters are arguments (compile once)."""

    def bind(fn):
        def run(params, *args, **kw):
            return fn(nnx.merge(graphdef, params), *args, **kw)
        return run

    statics = ("sampling", "num_real")
    return {
        "prefill": jax.jit(bind(_prefill),
                           static_argnames=("cache_len", "all_logits", *statics)),
        "decode": jax.jit(bind(_decode), static_argnames=statics, donate_argnums=(1,)),
        "speculate": jax.jit(bind(_speculate), static_argnames=statics, donate_argnums=(1,)),
        "loop": jax.jit(bind(_decode_loop), donate_argnums=(1,),
                        static_argnames=("steps", "speculative", *statics)),
    }


def cast_matrices(params: Any, dtype: Any) -> Any:
    """Store the embedding and the dense kernels in the compute dtype.

    The model casts exactly these to the compute dtype before every use, so the result
    is unchanged while a decode step reads half the weight bytes in bf16.  Norm scales
    and the lambda vectors stay fp32 (the model uses them in fp32).
    """
    def cast(path, x):
        names = {str(getattr(k, "key", getattr(k, "name", k))) for k in path[-2:]}
        if names & {"kernel", "embedding"} and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    return jax.tree_util.tree_map_with_path(cast, params)


class Engine:
    """Batched generation for one model structure.

    ``params`` may be swapped per call (``generate(..., params=nnx.state(other))``) for
    models of the same config: the compiled programs are reused.
    """

    def __init__(self, model: PythonCoder, *, num_real_tokens: int | None = None,
                 cast_params: bool = True) -> None:
        self.cfg: ModelConfig = model.cfg
        self.graphdef, self.params = nnx.split(model)
        if cast_params:
            self.params = cast_matrices(self.params, self.cfg.dtype())
        self.num_real = (num_sampleable(self.cfg.vocab_size) if num_real_tokens is None
                         else num_real_tokens)
        self.programs = _programs(self.graphdef)

    # ---- single passes (used by generate and by the conformance tests) -------------------
    def prefill(self, prompts_BP: np.ndarray, pads_B: np.ndarray, *, cache_len: int,
                key: jax.Array, sampling: SamplingConfig = GREEDY, params: Any = None,
                all_logits: bool = False) -> tuple[DecodeState, StepOutput, jax.Array]:
        return self.programs["prefill"](
            self.params if params is None else params, jnp.asarray(prompts_BP, jnp.int32),
            jnp.asarray(pads_B, jnp.int32), key, cache_len=cache_len, sampling=sampling,
            num_real=self.num_real, all_logits=all_logits)

    def decode(self, state: DecodeState, *, sampling: SamplingConfig = GREEDY,
               params: Any = None) -> tuple[DecodeState, StepOutput, jax.Array]:
        """One token per row; ``state`` is donated (do not reuse it)."""
        return self.programs["decode"](self.params if params is None else params, state,
                                       sampling=sampling, num_real=self.num_real)

    def speculate(self, state: DecodeState, *, sampling: SamplingConfig = GREEDY,
                  params: Any = None) -> tuple[DecodeState, StepOutput, jax.Array]:
        """Draft with MTP, verify in one T=2 forward; one or two tokens per row."""
        return self.programs["speculate"](self.params if params is None else params, state,
                                          sampling=sampling, num_real=self.num_real)

    def decode_loop(self, state: DecodeState, done_B, n_B, *, steps: int, max_new_tokens: int,
                    eos_id: int | None = EOS_ID, stop_token_ids: Sequence[int] = (),
                    speculative: bool = False, sampling: SamplingConfig = GREEDY,
                    params: Any = None) -> tuple[DecodeState, LoopOutput]:
        """Up to ``steps`` steps on the device (``state`` is donated); see ``_decode_loop``.

        ``done_B`` / ``n_B``: rows already finished and tokens generated so far per row."""
        ids = [int(t) for t in stop_token_ids]
        stop_ids = ids + [-1] * (round_up(max(len(ids), 1), 8) - len(ids))  # -1: no token
        return self.programs["loop"](
            self.params if params is None else params, state, jnp.asarray(done_B, bool),
            jnp.asarray(n_B, jnp.int32), jnp.asarray(-1 if eos_id is None else eos_id,
                                                     jnp.int32),
            jnp.asarray(max_new_tokens, jnp.int32), jnp.asarray(stop_ids, jnp.int32),
            steps=steps, speculative=speculative, sampling=sampling, num_real=self.num_real)

    # ---- the generation loop --------------------------------------------------------------
    def cache_len_for(self, prompt_len: int, max_new_tokens: int, batch: int,
                      speculative: bool) -> int:
        """Slots to preallocate: the prompt and the generation, plus room for holes when a
        batch speculates (rows that reject while others accept use two slots per token)."""
        need = prompt_len + max_new_tokens
        if speculative:
            need += max_new_tokens if batch > 1 else 1
        return round_up(need, SLOT_ALIGN)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        sampling: SamplingConfig = GREEDY,
        seed: int = 0,
        eos_id: int | None = EOS_ID,
        stop: Callable[[int, list[int]], bool] | None = None,
        speculative: bool = False,
        on_tokens: Callable[[int, list[int]], None] | None = None,
        params: Any = None,
        cache_len: int | None = None,
        prompt_len: int | None = None,
        stop_token_ids: Sequence[int] = (),
        device_loop: bool = True,
        chunk: int = 32,
    ) -> GenerationResult:
        """Generate up to ``max_new_tokens`` per prompt (token ids in, token ids out).

        ``stop(row, generated)`` is asked after each new token (e.g. text stop sequences);
        ``stop_token_ids``: a row also stops after emitting one of these (kept in its
        output); ``on_tokens(row, new)`` streams.  ``cache_len`` / ``prompt_len`` pin the
        static shapes (default: rounded up from the need), so repeated calls reuse one
        compile.  ``device_loop`` runs the steps in compiled chunks of ``chunk`` steps
        (EOS / length / stop ids checked on the device; ``stop`` and ``on_tokens`` run
        after each chunk); ``device_loop=False`` dispatches one step at a time.  Both
        give the same tokens.
        """
        if chunk < 1:
            raise ValueError(f"chunk={chunk}: must be >= 1")
        B = len(prompts)
        if B == 0:
            return GenerationResult([], [], {})
        self._check_prompts(prompts, max_new_tokens)
        P = prompt_len or round_up(max(len(p) for p in prompts), PROMPT_ALIGN)
        S = cache_len or self.cache_len_for(P, max_new_tokens, B, speculative)
        if S < P + 1:
            raise ValueError(f"cache_len={S} leaves no room after a {P}-token prompt")
        tokens_BP, pads_B = left_pad(prompts, P)
        rows = _Rows(B, max_new_tokens, eos_id, {int(t) for t in stop_token_ids}, stop,
                     on_tokens)
        rows.stats.update(prompt_tokens=int(sum(len(p) for p in prompts)),
                          speculative=speculative)

        t0 = time.perf_counter()
        state, out, _ = self.prefill(tokens_BP, pads_B, cache_len=S,
                                     key=jax.random.PRNGKey(seed), sampling=sampling,
                                     params=params)
        rows.absorb(out, is_step=False)
        t1 = time.perf_counter()
        loop = self._device_steps if device_loop else self._host_steps
        state = loop(state, rows, P=P, S=S, chunk=chunk, speculative=speculative,
                     sampling=sampling, params=params)
        jax.block_until_ready(state)
        t2 = time.perf_counter()
        new_tokens = sum(len(g) for g in rows.gen)
        stats = rows.stats
        stats.update(
            generated_tokens=new_tokens,
            cache_len=S,
            prefill_seconds=t1 - t0,
            decode_seconds=t2 - t1,
            decode_tokens_per_second=(new_tokens - B) / max(t2 - t1, 1e-9),
            acceptance_rate=(stats["accepted"] / stats["drafted"]) if stats["drafted"]
            else math.nan,
        )
        return GenerationResult(rows.gen, [r or "length" for r in rows.reasons], stats)

    def _check_prompts(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty; generation needs at least one token")
            bad = [t for t in p if not 0 <= int(t) < self.cfg.vocab_size]
            if bad:
                raise ValueError(f"prompt {i} has token ids outside [0, "
                                 f"{self.cfg.vocab_size}): {bad[:5]}")
        longest = max(len(p) for p in prompts)
        limit = self.cfg.max_position_embeddings
        if longest + max_new_tokens > limit:
            raise ValueError(
                f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                f"model's {limit}-token context (INF-04)")

    def _device_steps(self, state, rows: _Rows, *, P: int, S: int, chunk: int,
                      speculative: bool, sampling: SamplingConfig, params: Any):
        """Decode in compiled chunks of ``chunk`` steps until every row has finished."""
        del P, S  # the device loop bounds itself by the cache it holds
        while rows.active():
            state, loop = self.decode_loop(
                state, [r is not None for r in rows.reasons], [len(g) for g in rows.gen],
                steps=chunk, max_new_tokens=rows.max_new_tokens, eos_id=rows.eos_id,
                stop_token_ids=sorted(rows.stop_ids), speculative=speculative,
                sampling=sampling, params=params)
            n = int(loop.steps)
            toks, counts, acc, spec = jax.device_get(
                (loop.tokens_NBK, loop.count_NB, loop.accepted_NB, loop.speculated_N))
            for i in range(n):
                rows.absorb(StepOutput(toks[i], counts[i], acc[i] if spec[i] else None))
            if n < chunk:
                for b in rows.active():  # the device saw no room for another step
                    rows.reasons[b] = "length"
        return state

    def _host_steps(self, state, rows: _Rows, *, P: int, S: int, chunk: int,
                    speculative: bool, sampling: SamplingConfig, params: Any):
        """Dispatch one step at a time, absorbing each step while the next one runs."""
        del chunk
        index_bound = P  # an upper bound of state.index, exact after a sync
        in_flight: StepOutput | None = None
        while active := rows.active():
            # Every step emits >= 1 token per row: stop dispatching once all rows are full.
            lower = min(len(rows.gen[b]) for b in active) + (in_flight is not None)
            use_spec = speculative and index_bound + 2 <= S
            if speculative and not use_spec and lower < rows.max_new_tokens:
                index_bound = int(state.index)  # sync: the bound assumed +2 per step
                use_spec = index_bound + 2 <= S
            if lower >= rows.max_new_tokens or (not use_spec and index_bound + 1 > S):
                if in_flight is not None:
                    rows.absorb(in_flight)
                    in_flight = None
                    continue
                if lower < rows.max_new_tokens:
                    for b in active:
                        rows.reasons[b] = "length"  # the preallocated cache is full
                break
            if use_spec:
                state, out, _ = self.speculate(state, sampling=sampling, params=params)
                index_bound += 2
            else:
                state, out, _ = self.decode(state, sampling=sampling, params=params)
                index_bound += 1
            if in_flight is not None:  # absorb the previous step while this one runs
                rows.absorb(in_flight)
            in_flight = out
        return state
