"""INF-05 (generation in one compiled loop) and INF-06 (attention over the live cache only).

INF-05.  ``Engine.generate`` runs decode steps in a ``lax.while_loop`` (chunks of ``chunk``
steps, EOS / length / stop-token checks on the device); ``device_loop=False`` is the
one-step-per-dispatch host loop.  Every step is the same computation in both, so the
tokens, finish reasons and step/acceptance counts must be *identical*: checked over random
prompts, batch sizes, chunk sizes, plain and speculative decoding, greedy and seeded
sampling, with EOS and stop tokens.  Streaming and text stop callbacks run per chunk and
must see exactly the host loop's tokens.

INF-06.  Cached attention reads cache slots only up to a bucket covering ``index + T``.
Tolerances: the sliced and the full map sum the same nonzero terms (masked slots add exact
zeros) in possibly different orders, so they agree to a few fp32 ulp: ``rtol = atol = 1e-6``
on outputs of size ~1.  That the trailing slots are not read at all is checked by filling
them with NaN: any read of them would turn the output into NaN (``0 * NaN``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythoncoder.infer.engine import Engine
from pythoncoder.infer.sampling import SamplingConfig
from pythoncoder.infer.stops import TextStopper
from pythoncoder.model.attention import attention_mask, blocked_differential_map
from pythoncoder.model.live_attention import buckets, live_differential_map
from pythoncoder.testing.models import agreeable_model

PROMPT_LEN, MAX_NEW = 16, 20
RTOL = ATOL = 1e-6


@pytest.fixture(scope="module")
def loop_cfg(make_micro):
    return make_micro(num_layers=2)


@pytest.fixture(scope="module")
def engine(loop_cfg):
    # "mostly"-agreeing drafts: speculation accepts and rejects within one batch.
    return Engine(agreeable_model(loop_cfg, 0, trunk_scale=0.01, mtp_noise=0.3))


def _both(engine, prompts, **kw):
    host = engine.generate(prompts, prompt_len=PROMPT_LEN, device_loop=False, **kw)
    dev = engine.generate(prompts, prompt_len=PROMPT_LEN, device_loop=True, **kw)
    return host, dev


def _same(host, dev):
    assert dev.tokens == host.tokens
    assert dev.finish_reasons == host.finish_reasons
    for k in ("steps", "drafted", "accepted", "generated_tokens"):
        assert dev.stats[k] == host.stats[k], k


@pytest.mark.req("INF-05", "INF-02", "INF-03")
@settings(max_examples=6, deadline=None)  # two generations per example
@given(seed=st.integers(0, 2**16),
       lengths=st.sampled_from([1, 3]).flatmap(
           lambda b: st.lists(st.integers(1, PROMPT_LEN), min_size=b, max_size=b)),
       max_new=st.integers(1, MAX_NEW), speculative=st.booleans(),
       sampled=st.booleans(), eos=st.booleans(), n_stop=st.integers(0, 2),
       chunk=st.sampled_from([1, 3, 32]), cache_len=st.sampled_from([None, 256]))
def test_device_loop_equals_host_loop(engine, loop_cfg, seed, lengths, max_new, speculative,
                                      sampled, eos, n_stop, chunk, cache_len):
    rng = np.random.default_rng(seed)
    V = loop_cfg.vocab_size
    prompts = [rng.integers(0, V, n).tolist() for n in lengths]
    sampling = SamplingConfig(temperature=1.0, top_k=3) if sampled else SamplingConfig()
    # with a top-k of 3, stops drawn from the greedy-ish head often fire
    first = engine.generate(prompts, max_new_tokens=max_new, eos_id=None, sampling=sampling,
                            seed=seed, prompt_len=PROMPT_LEN).tokens
    seen = sorted({t for row in first for t in row})
    picks = rng.choice(seen, size=min(n_stop + int(eos), len(seen)), replace=False).tolist()
    eos_id = int(picks.pop()) if eos and picks else None
    host, dev = _both(engine, prompts, max_new_tokens=max_new, eos_id=eos_id,
                      stop_token_ids=picks, speculative=speculative, sampling=sampling,
                      seed=seed, chunk=chunk, cache_len=cache_len)
    _same(host, dev)


@pytest.mark.req("INF-05", "INF-03")
def test_stop_tokens_stop_each_row(engine, loop_cfg):
    """Each row ends at its own first stop token (kept), independently of the others."""
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, loop_cfg.vocab_size, n).tolist() for n in (16, 4, 9)]
    free = engine.generate(prompts, max_new_tokens=MAX_NEW, eos_id=None).tokens
    stop_tok = free[0][2]
    res = engine.generate(prompts, max_new_tokens=MAX_NEW, eos_id=None,
                          stop_token_ids=[stop_tok], chunk=4)
    for row, got, why in zip(free, res.tokens, res.finish_reasons):
        if stop_tok in row:
            cut = row.index(stop_tok) + 1
            assert (got, why) == (row[:cut], "stop")
        else:
            assert (got, why) == (row, "length")
    assert res.finish_reasons[0] == "stop" and len(res.tokens[0]) <= 3


@pytest.mark.req("INF-05")
@pytest.mark.parametrize("speculative", [False, True])
def test_chunked_streaming_and_text_stops_match_the_host_loop(engine, loop_cfg, speculative):
    """Streaming callbacks and a text stop sequence, run once per chunk, see the same
    tokens (and so the same text) as the per-step host loop; nothing is streamed twice
    and nothing past a stop."""
    rng = np.random.default_rng(9)
    prompts = [rng.integers(0, loop_cfg.vocab_size, n).tolist() for n in (7, 16)]
    alphabet = "ab\ncd"
    text = "".join  # token t -> one character, so the stop can fall mid-chunk

    def decode(ids):
        return text(alphabet[t % len(alphabet)] for t in ids)

    free = engine.generate(prompts, max_new_tokens=MAX_NEW, eos_id=None).tokens
    stop_seq = decode(free[1][5:7])  # row 1 stops after 7 tokens, mid-chunk of 4
    results, streams = [], []
    for device_loop in (False, True):
        seen: dict[int, list[int]] = {0: [], 1: []}
        results.append(engine.generate(
            prompts, max_new_tokens=MAX_NEW, eos_id=None, speculative=speculative,
            stop=TextStopper(decode, [stop_seq]),
            on_tokens=lambda b, new, seen=seen: seen[b].extend(new),
            device_loop=device_loop, chunk=4))
        streams.append(seen)
    host, dev = results
    _same(host, dev)
    assert streams[0] == streams[1] == {0: dev.tokens[0], 1: dev.tokens[1]}
    assert dev.finish_reasons[1] == "stop" and len(dev.tokens[1]) <= 7
    assert stop_seq in decode(dev.tokens[1])


@pytest.mark.req("INF-05")
def test_full_cache_ends_with_length_in_the_loop(engine, loop_cfg):
    prompt = np.random.default_rng(2).integers(0, loop_cfg.vocab_size, 16).tolist()
    for speculative in (False, True):
        host, dev = _both(engine, [prompt], max_new_tokens=MAX_NEW, eos_id=None,
                          speculative=speculative, cache_len=PROMPT_LEN + 7, chunk=32)
        _same(host, dev)
        assert dev.finish_reasons == ["length"] and len(dev.tokens[0]) == 8


# ---- INF-06: live-prefix attention ------------------------------------------------------
def _attention_inputs(seed, B=2, S=64, T=1, G=2, R=3, D=8):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(ks[0], (B, T, 2 * G * R, D))
    k = jax.random.normal(ks[1], (B, S, 2 * G, D))
    v = jax.random.normal(ks[2], (B, S, G, 2 * D))
    seg = (jax.random.uniform(ks[3], (B, S)) > 0.2).astype(jnp.int32)  # holes: segment 0
    return q, k, v, seg


@pytest.mark.req("INF-06")
@pytest.mark.parametrize("T", [1, 2, 16])
@pytest.mark.parametrize("index", [0, 7, 8, 30, 47, 64 - 16])
def test_live_prefix_attention_equals_full_cache_attention(T, index):
    S, lam = 64, jnp.float32(0.6)
    if index + T > S:
        pytest.skip("past the cache")
    q, k, v, seg = _attention_inputs(index * 31 + T, S=S, T=T)
    seg = seg.at[:, index:index + T].set(1)  # as in the engine: a query sees its own slot
    q_slots = jnp.broadcast_to(index + jnp.arange(T, dtype=jnp.int32), (2, T))
    q_seg = jnp.ones((2, T), jnp.int32)
    full = blocked_differential_map(q, k, v, lam, q_slots, jnp.arange(S, dtype=jnp.int32),
                                    q_seg, seg, gqa_ratio=3, block=8)
    live = jnp.asarray(index + T, jnp.int32)
    fn = jax.jit(lambda *a: live_differential_map(*a, gqa_ratio=3, block=8, min_bucket=8))
    got = fn(q, k, v, lam, q_slots, seg, q_seg, live)
    np.testing.assert_allclose(np.asarray(got), np.asarray(full), rtol=RTOL, atol=ATOL)
    # Slots past the chosen bucket are never read: NaN there leaves the output unchanged.
    bucket = next(b for b in buckets(S, 8) if b >= index + T)
    if bucket < S:
        poison = jnp.arange(S)[None, :, None, None] >= bucket
        k_bad, v_bad = jnp.where(poison, jnp.nan, k), jnp.where(poison, jnp.nan, v)
        got_bad = fn(q, k_bad, v_bad, lam, q_slots, seg, q_seg, live)
        np.testing.assert_allclose(np.asarray(got_bad), np.asarray(full), rtol=RTOL, atol=ATOL)
        # control: the full-cache map does read them (the check above can fail)
        full_bad = blocked_differential_map(q, k_bad, v_bad, lam, q_slots,
                                            jnp.arange(S, dtype=jnp.int32), q_seg, seg,
                                            gqa_ratio=3, block=8)
        assert np.isnan(np.asarray(full_bad)).all()


@pytest.mark.req("INF-06")
def test_live_prefix_attention_keeps_the_floor_exact():
    """Both maps are normalised over every live key before the floor: a softmax taken over a
    bucket that misses a live key (the bug) disagrees far beyond the tolerance."""
    S, T, index = 64, 1, 40
    q, k, v, seg = _attention_inputs(3, S=S, T=T)
    seg = jnp.ones_like(seg)
    q_slots = jnp.full((2, T), index, jnp.int32)
    q_seg = jnp.ones((2, T), jnp.int32)
    lam = jnp.float32(0.8)
    full = blocked_differential_map(q, k, v, lam, q_slots, jnp.arange(S, dtype=jnp.int32),
                                    q_seg, seg, gqa_ratio=3, block=8)
    mask = attention_mask(q_slots, jnp.arange(S, dtype=jnp.int32), q_seg, seg)
    assert int(mask.sum()) == 2 * (index + 1)
    got = live_differential_map(q, k, v, lam, q_slots, seg, q_seg, jnp.int32(index + T),
                                gqa_ratio=3, block=8, min_bucket=8)
    np.testing.assert_allclose(np.asarray(got), np.asarray(full), rtol=RTOL, atol=ATOL)
    short = blocked_differential_map(q, k[:, :32], v[:, :32], lam, q_slots,
                                     jnp.arange(32, dtype=jnp.int32), q_seg, seg[:, :32],
                                     gqa_ratio=3, block=8)
    assert np.max(np.abs(np.asarray(short) - np.asarray(full))) > 1e3 * ATOL


@pytest.mark.req("INF-06")
def test_buckets_cover_the_cache():
    assert buckets(64, 8) == (8, 16, 32, 64)
    assert buckets(2496, 128) == (128, 256, 512, 1024, 2048, 2496)
    assert buckets(100, 128) == (100,)


@pytest.mark.req("INF-06")
def test_the_model_reads_only_the_live_bucket_of_its_cache(engine, loop_cfg):
    """Through the whole model (every layer, as the engine calls it): a prompt at slots
    0..15 of a 512-slot cache with NaN in every slot from 128 on gives the same finite
    logits as a clean cache, so the model hands the live length to attention.  Control:
    NaN inside the live bucket (masked slots 100..127) does reach the output."""
    from flax import nnx

    from pythoncoder.infer.engine import cached_forward

    model = nnx.merge(engine.graphdef, engine.params)
    B, T, S = 2, PROMPT_LEN, 512
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, loop_cfg.vocab_size, (B, T)),
                         jnp.int32)
    segs, offsets = jnp.ones((B, T), jnp.int32), jnp.zeros((B,), jnp.int32)
    step = jax.jit(lambda params, cache: cached_forward(
        nnx.merge(engine.graphdef, params), cache, tokens, jnp.int32(0), offsets, segs)[0])

    def fwd(cache):
        return step(engine.params, cache)

    def poisoned(start):
        cache = model.init_cache(B, S)
        bad = jnp.arange(S)[None, None, :, None, None] >= start
        return cache._replace(k=jnp.where(bad, jnp.nan, cache.k),
                              v=jnp.where(bad, jnp.nan, cache.v))

    clean = np.asarray(fwd(model.init_cache(B, S)))
    assert np.isfinite(clean).all()
    np.testing.assert_array_equal(np.asarray(fwd(poisoned(128))), clean)
    assert np.isnan(np.asarray(fwd(poisoned(100)))).any()


@pytest.mark.req("INF-06")
@pytest.mark.parametrize("remat", ["none", "full"])  # 1b decodes with its "auto" = full
@pytest.mark.parametrize("speculative", [False, True])
def test_the_compiled_decode_loop_never_copies_the_cache(loop_cfg, speculative, remat):
    """Each layer writes its new slots into the stacked cache in place and reads its live
    bucket: the optimized program of the on-device loop holds no copy of a cache-sized
    array (before, scanning the cache through the layers and a per-step lax.cond copied
    all of it every step, so a step's cost grew with the preallocated length)."""
    import re

    from pythoncoder.infer.sampling import GREEDY
    from pythoncoder.model import build_model

    engine = Engine(build_model(loop_cfg.replace(remat_policy=remat), seed=0))
    prompts = np.ones((2, PROMPT_LEN), np.int32)
    state, _, _ = engine.prefill(prompts, np.zeros((2,), np.int32), cache_len=256,
                                 key=jax.random.PRNGKey(0))
    hlo = engine.programs["loop"].lower(
        engine.params, state, jnp.zeros((2,), bool), jnp.zeros((2,), jnp.int32),
        jnp.int32(-1), jnp.int32(8), jnp.zeros((1,), jnp.int32), steps=8,
        speculative=speculative, sampling=GREEDY, num_real=engine.num_real).compile().as_text()

    def shape(x):
        return f"[{','.join(map(str, x.shape))}]"

    def cache_copies(text, shapes):
        return [line for line in text.splitlines()
                if re.search(r"= \w+\[[\d,]*\]\{[\d,]*\} copy(-start)?\(", line)
                and any(b in line.split("=")[1][:60] for b in shapes)]

    big = {shape(state.cache.k), shape(state.cache.v), shape(state.cache.segment_ids)}
    assert cache_copies(hlo, big) == []

    # control: the old structure (the cache scanned through the layers as input and
    # stacked as output, inside the step loop) does copy it, and the check sees that
    def old_style(cache):
        def step(i, c):
            def layer(x, lc):
                lc = jax.lax.dynamic_update_slice(lc, jnp.ones((2, 1, 4), c.dtype), (0, i, 0))
                return x + lc.sum(), lc
            return jax.lax.scan(layer, 0.0, c)[1]
        return jax.lax.fori_loop(0, 4, step, cache)

    toy = jnp.zeros((3, 2, 64, 4))
    old = jax.jit(old_style, donate_argnums=0).lower(toy).compile().as_text()
    assert cache_copies(old, {shape(toy)})
