"""INF-01 and INF-04: the KV cache reproduces the full forward; contexts up to 8192 tokens.

Tolerances.  Everything runs in fp32.  The cached and the full pass compute the same
sums in different orders (a 1-token query against a preallocated cache vs a T-token
query block; masked slots contribute exact zeros), so the logits agree to a few ulp
times the accumulation length: about 1e-6 absolute on logits of size ~1 (the model's own
quick check sees ~1e-6).  ``atol = rtol = 2e-5`` leaves a 10x margin, while the real
bugs this guards against move logits by far more: each test has a negative control
(a decode step with the wrong position offset) that must miss by over 100x ``atol``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pythoncoder.infer.engine import Engine, left_pad
from pythoncoder.model import abstract_model, build_model
from pythoncoder.model.rope import rope_cos_sin

ATOL = RTOL = 2e-5


def assert_logits_close(cached_TV, full_TV) -> None:
    """``assert_allclose`` over all positions, computed on device (the arrays are ~300 MB):
    the worst position is checked with numpy, so the assertion holds for all iff for it."""
    a, b = jnp.asarray(cached_TV), jnp.asarray(full_TV)
    assert a.shape == b.shape, (a.shape, b.shape)
    excess = jnp.max(jnp.abs(a - b) - RTOL * jnp.abs(b), axis=-1)
    worst = int(jnp.argmax(excess))
    np.testing.assert_allclose(np.asarray(a[worst]), np.asarray(b[worst]), rtol=RTOL, atol=ATOL,
                               err_msg=f"worst position {worst}")


def _teacher_forced(engine, rows, prefix_lens, cache_len, params=None):
    """Prefill each row's first ``prefix_lens[b]`` tokens (left-padded), then feed the rest one
    token per decode step.  Returns per row the logits at each of its real positions."""
    B = len(rows)
    prompts = [r[:n] for r, n in zip(rows, prefix_lens)]
    tokens, pads = left_pad(prompts)
    P = tokens.shape[1]
    state, _, prompt_logits = engine.prefill(tokens, pads, cache_len=cache_len,
                                             key=jax.random.PRNGKey(0), all_logits=True,
                                             params=params)
    steps = max(len(r) for r in rows) - P
    feeds = np.asarray([r[n:] for r, n in zip(rows, prefix_lens)], np.int32)  # (B, steps)
    assert feeds.shape == (B, steps), "rows must end on the same step"
    decoded = []
    for i in range(steps):
        state = state._replace(pending_B=jnp.asarray(feeds[:, i]))
        state, _, logits = engine.decode(state, params=params)
        decoded.append(logits)
    decoded_BTV = jnp.stack(decoded, axis=1)
    return [jnp.concatenate([prompt_logits[b, pads[b]:], decoded_BTV[b]], axis=0)
            for b in range(B)], state


@pytest.mark.req("INF-01")
def test_cached_decode_equals_full_forward_tiny_batched(tiny_model):
    """~500-token prompts of two lengths in one left-padded batch: every position matches."""
    rng = np.random.default_rng(0)
    lengths, prefix = (512, 430), (100, 18)  # both rows then decode 412 single tokens
    rows = [rng.integers(0, 151_643, n).tolist() for n in lengths]
    engine = Engine(tiny_model)
    cached, _ = _teacher_forced(engine, rows, prefix, cache_len=512)
    # One batched full forward: right padding cannot reach earlier positions (causal).
    padded = np.zeros((2, 512), np.int32)
    for b, row in enumerate(rows):
        padded[b, :len(row)] = row
    full = nnx.jit(lambda m, t: m(t))(tiny_model, jnp.asarray(padded))
    for b, row in enumerate(rows):
        assert cached[b].shape == (len(row), 151_808)
        assert_logits_close(cached[b], full[b, :len(row)])


@pytest.mark.req("INF-01")
def test_cache_check_catches_a_position_bug(make_micro):
    """Negative control: one decode step at the wrong RoPE offset misses by >> ATOL."""
    micro_cfg = make_micro(num_layers=2)
    model = build_model(micro_cfg, seed=3)
    engine = Engine(model)
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, micro_cfg.vocab_size, 40).tolist(),
            rng.integers(0, micro_cfg.vocab_size, 25).tolist()]
    tokens, pads = left_pad([rows[0][:30], rows[1][:15]])
    state, _, _ = engine.prefill(tokens, pads, cache_len=64, key=jax.random.PRNGKey(0))
    good_state = jax.tree.map(jnp.copy, state)
    feed = [rows[0][30], rows[1][15]]
    _, _, good = engine.decode(good_state._replace(pending_B=jnp.asarray(feed, jnp.int32)))
    # the bug: forget row 1's left padding when decoding
    _, _, bad = engine.decode(state._replace(pending_B=jnp.asarray(feed, jnp.int32),
                                             offset_B=jnp.zeros(2, jnp.int32)))
    full = model(jnp.asarray([rows[1][:16]], jnp.int32))[0, -1]
    np.testing.assert_allclose(np.asarray(good[1]), np.asarray(full), rtol=RTOL, atol=ATOL)
    assert np.max(np.abs(np.asarray(bad[1]) - np.asarray(full))) > 100 * ATOL


@pytest.mark.req("INF-01", "YARN-01")
def test_cached_decode_equals_full_forward_with_yarn_past_2048(make_micro):
    """YaRN on: prefill 2048 tokens, then decode 448 single tokens at positions 2048..2495.

    A 2-layer micro model (the tiny preset's attention shapes, a 512-token vocabulary)
    keeps the 2496-token full forward cheap."""
    plain_model = build_model(make_micro(num_layers=2, attn_block_size=256), seed=5)
    cfg = plain_model.cfg.with_yarn()
    _, params = nnx.split(plain_model)
    model = nnx.merge(nnx.split(abstract_model(cfg))[0], params)
    rng = np.random.default_rng(2)
    row = rng.integers(0, cfg.vocab_size, 2496).tolist()
    engine = Engine(model)
    cached, state = _teacher_forced(engine, [row], [2048], cache_len=2496)
    assert int(state.index) == 2496
    full = nnx.jit(lambda m, t: m.logits(m.hidden_states(t)[0][:, 2048:]))(
        model, jnp.asarray([row], jnp.int32))[0]
    assert_logits_close(cached[0][2048:], full)
    # YaRN really is on in the model that ran: its rotary tables differ past 2048.
    pos = jnp.asarray([[2400]], jnp.int32)
    assert model.cfg.yarn and not plain_model.cfg.yarn
    assert float(jnp.max(jnp.abs(rope_cos_sin(pos, cfg)[0] - rope_cos_sin(
        pos, plain_model.cfg)[0]))) > 0.1


def _long_context_model(make_micro):
    cfg = make_micro(num_layers=1, hidden_size=32, head_dim=8, num_q_subheads=4,
                     num_kv_subheads=2, intermediate_size=32, attn_block_size=512).with_yarn()
    assert cfg.max_position_embeddings == 8192
    return build_model(cfg, seed=4)


@pytest.mark.req("INF-04")
def test_prompt_plus_generation_reaches_8192(make_micro):
    """A 7680-token prompt plus 512 generated tokens fills the 8192-token context (YaRN on,
    every slot of an 8192-slot cache used); one more token is refused with a clear error."""
    model = _long_context_model(make_micro)
    engine = Engine(model)
    prompt = np.random.default_rng(3).integers(0, model.cfg.vocab_size, 7680).tolist()
    result = engine.generate([prompt], max_new_tokens=512, eos_id=None)
    assert result.finish_reasons == ["length"]
    assert result.stats["cache_len"] == 8192
    assert len(result.tokens[0]) == 512 and len(prompt) + 512 == 8192
    with pytest.raises(ValueError, match="8192"):
        engine.generate([prompt], max_new_tokens=513)


@pytest.mark.slow
@pytest.mark.req("INF-04", "INF-01")
def test_token_8192_is_the_full_forward_argmax(make_micro):
    """The last of 8192 tokens is the full forward's argmax over the 8191 before it."""
    model = _long_context_model(make_micro)
    prompt = np.random.default_rng(3).integers(0, model.cfg.vocab_size, 7680).tolist()
    result = Engine(model).generate([prompt], max_new_tokens=512, eos_id=None)
    # One extra trailing token makes 8192 (a multiple of the attention block); causality
    # keeps it from touching position 8190, whose logits chose the last token.
    fed = prompt + result.tokens[0][:-1] + [0]
    logits = nnx.jit(lambda m, t: m(t)[:, 8190])(model, jnp.asarray([fed], jnp.int32))
    assert int(jnp.argmax(logits[0])) == result.tokens[0][-1]


@pytest.mark.req("INF-04", "ARCH-05")
def test_8192_cache_for_the_1b_preset_is_abstractly_valid():
    """The full-size cache at 8192 slots: GQA layout, 1024 values per token per layer."""
    from pythoncoder.model import ModelConfig

    model = abstract_model(ModelConfig.preset("1b").with_yarn())
    cache = jax.eval_shape(lambda: model.init_cache(1, 8192))
    assert cache.k.shape == (24, 1, 8192, 4, 128)
    assert cache.v.shape == (24, 1, 8192, 2, 256)
    assert cache.k.shape[3] * cache.k.shape[4] + cache.v.shape[3] * cache.v.shape[4] == 1024
