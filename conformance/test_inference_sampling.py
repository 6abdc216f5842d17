"""INF-03 sampling, stops, EOS and batching; TOK-02 padding ids are never sampled."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from pythoncoder.infer.engine import Engine
from pythoncoder.infer.sampling import (
    EOS_ID,
    NUM_REAL_TOKENS,
    SamplingConfig,
    filtered_logits,
    sample,
)
from pythoncoder.infer.stops import HUMANEVAL_STOPS, TextStopper, find_stop, truncate_at_stop
from pythoncoder.model import build_model

V = 64
# No subnormals: XLA on CPU flushes them to zero, which would tie them with 0.0 on device
# while numpy still orders them (a false failure, seen in CI).
logit_rows = hnp.arrays(np.float32, (4, V),
                        elements=st.floats(-8, 8, width=32, allow_subnormal=False))


@pytest.fixture(scope="module")
def micro_model(make_micro):
    return build_model(make_micro(num_layers=2), seed=21)


@pytest.fixture(scope="module")
def engine(micro_model):
    return Engine(micro_model)


P, S = 16, 64  # pinned prompt and cache lengths: one compile per batch size


def _gen(engine, prompts, **kw):
    return engine.generate(prompts, prompt_len=P, cache_len=S, **kw)


def _prompts(seed, lengths, vocab=512):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


# ---- the filters, as properties against naive numpy (float64) --------------------------
@pytest.mark.req("INF-03")
@given(logits=logit_rows, k=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_top_k_samples_only_among_the_k_largest(logits, k, seed):
    tok = np.asarray(sample(jnp.asarray(logits), jax.random.PRNGKey(seed),
                            SamplingConfig(temperature=1.0, top_k=k)))
    kth = np.sort(logits, axis=-1)[:, ::-1][:, k - 1]
    assert np.all(logits[np.arange(4), tok] >= kth)


@pytest.mark.req("INF-03")
@given(logits=logit_rows, p=st.floats(0.05, 0.95), temp=st.floats(0.3, 2.0))
def test_top_p_keeps_exactly_the_nucleus(logits, p, temp):
    """Kept set = the fewest most-likely tokens whose mass reaches p (ties kept); checked
    two-sided against float64 with a 1e-4 slack on p for float32 rounding."""
    kept = np.isfinite(np.asarray(filtered_logits(jnp.asarray(logits),
                                                  SamplingConfig(temperature=temp, top_p=p))))
    x = logits.astype(np.float64) / temp
    probs = np.exp(x - x.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for row in range(4):
        order = np.argsort(-x[row], kind="stable")
        above = np.cumsum(probs[row][order]) - probs[row][order]  # mass strictly before

        def nucleus(pp, row=row, order=order, above=above):
            members = order[above < pp]
            return x[row] >= x[row][members].min()  # ties with the last member are kept

        assert np.all(kept[row] <= nucleus(p + 1e-4)), "kept a token outside the nucleus"
        assert np.all(nucleus(p - 1e-4) <= kept[row]), "dropped a token of the nucleus"


def _ref_kept(logits, temp, k, p):
    """float64 reference of the joint filter, from INF-03's text: temperature, then top-k
    (ties with the k-th kept), then the nucleus of the *renormalised survivors* (the
    fewest most-likely survivors whose mass reaches p; ties with the last member kept).
    ``p`` is a pair (low, high) giving the slack for float32 rounding."""
    x = logits.astype(np.float64) / temp
    kth = np.sort(x)[::-1][k - 1]
    alive = x >= kth
    probs = np.where(alive, np.exp(x - x.max()), 0.0)
    probs /= probs.sum()
    order = np.argsort(-x, kind="stable")
    above = np.cumsum(probs[order]) - probs[order]
    sets = []
    for pp in p:
        members = order[(above < pp) & alive[order]]
        sets.append(alive & (x >= x[members].min()))
    return sets


@pytest.mark.req("INF-03")
@given(logits=logit_rows, k=st.integers(1, 12), p=st.floats(0.05, 0.95),
       temp=st.floats(0.3, 2.0))
def test_top_k_then_top_p_over_the_survivors(logits, k, p, temp):
    """With both filters, the nucleus is taken over the top-k survivors renormalised, not
    over the whole distribution (which keeps too few tokens when k cuts real mass)."""
    kept = np.isfinite(np.asarray(filtered_logits(
        jnp.asarray(logits), SamplingConfig(temperature=temp, top_k=k, top_p=p))))
    for row in range(4):
        inner, outer = _ref_kept(logits[row], temp, k, (p - 1e-4, p + 1e-4))
        assert np.all(kept[row] <= outer), "kept a token outside the top-k nucleus"
        assert np.all(inner <= kept[row]), "dropped a token of the top-k nucleus"


@pytest.mark.req("INF-03")
def test_temperature_sampling_follows_softmax_over_temperature():
    logits = jnp.asarray([1.0, 0.5, 0.0, -1.0, 2.0, -3.0, 0.2, 0.9], jnp.float32)
    n, temp = 100_000, 0.7
    toks = sample(jnp.broadcast_to(logits, (n, 8)), jax.random.PRNGKey(0),
                  SamplingConfig(temperature=temp))
    freq = np.bincount(np.asarray(toks), minlength=8) / n
    expect = np.asarray(jax.nn.softmax(logits / temp), np.float64)
    np.testing.assert_allclose(freq, expect, rtol=0,
                               atol=float(5 * np.sqrt(expect * (1 - expect) / n).max()))


@pytest.mark.req("INF-03", "TOK-02")
@given(logits=logit_rows, seed=st.integers(0, 2**16),
       sampling=st.sampled_from([SamplingConfig(), SamplingConfig(1.0),
                                 SamplingConfig(1.5, top_k=40), SamplingConfig(0.8, top_p=0.99)]))
def test_masked_ids_are_never_chosen(logits, seed, sampling):
    """The padding mask holds under every filter, even when those ids have the top logits."""
    num_real = 48
    boosted = logits.copy()
    boosted[:, num_real:] += 100.0
    tok = np.asarray(sample(jnp.asarray(boosted), jax.random.PRNGKey(seed), sampling, num_real))
    assert np.all(tok < num_real)


# ---- the engine end to end -----------------------------------------------------------------
@pytest.mark.req("INF-03", "INF-01")
def test_batched_greedy_equals_naive_full_forward_argmax(engine, micro_model):
    """Left-padded batch of three lengths vs re-running the whole sequence every token."""
    prompts = _prompts(0, (3, 16, 9))
    res = _gen(engine, prompts, max_new_tokens=10, eos_id=None)
    assert res.finish_reasons == ["length"] * 3
    fwd = nnx.jit(lambda m, t: m(t))
    for prompt, got in zip(prompts, res.tokens):
        seq = list(prompt)
        for _ in range(10):
            padded = np.zeros((1, 32), np.int32)  # right padding: causal, one compile
            padded[0, :len(seq)] = seq
            seq.append(int(jnp.argmax(fwd(micro_model, jnp.asarray(padded))[0, len(seq) - 1])))
        assert got == seq[len(prompt):]


@pytest.mark.req("INF-03")
def test_seeded_sampling_is_reproducible(engine):
    prompts = _prompts(1, (5, 12))
    s = SamplingConfig(temperature=1.0, top_k=50, top_p=0.95)
    a = _gen(engine, prompts, max_new_tokens=16, sampling=s, seed=3, eos_id=None)
    b = _gen(engine, prompts, max_new_tokens=16, sampling=s, seed=3, eos_id=None)
    c = _gen(engine, prompts, max_new_tokens=16, sampling=s, seed=4, eos_id=None)
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens


@pytest.mark.req("INF-03")
@pytest.mark.parametrize("speculative", [False, True])
def test_eos_ends_each_row_and_is_not_returned(engine, speculative):
    prompts = _prompts(2, (4, 10, 7))
    free = _gen(engine, prompts, max_new_tokens=16, eos_id=None)
    eos = free.tokens[1][5]  # row 1 certainly meets it; others may too
    res = _gen(engine, prompts, max_new_tokens=16, eos_id=eos,
                          speculative=speculative)
    for row, full in zip(res.tokens, free.tokens):
        cut = full.index(eos) if eos in full else len(full)
        assert row == full[:cut]
    assert res.finish_reasons[1] == "eos"
    assert [len(t) == 16 for t in res.tokens] == [r == "length" for r in res.finish_reasons]


@pytest.mark.req("INF-03")
def test_stop_sequences_cut_the_text(engine):
    """HumanEval stops on the decoded text, with a toy detokeniser (id -> piece)."""
    pieces = ["\n", "\n", "\n", "def", "#", "class", "if", "print", "x", " = ", "(y)", "  "]
    decode = lambda ids: "".join(pieces[i % len(pieces)] for i in ids)  # noqa: E731
    prompts = _prompts(3, (6, 11))
    s = SamplingConfig(temperature=1.0)
    free = _gen(engine, prompts, max_new_tokens=40, sampling=s, seed=0, eos_id=None)
    res = _gen(engine, prompts, max_new_tokens=40, sampling=s, seed=0, eos_id=None,
                          stop=TextStopper(decode, HUMANEVAL_STOPS))
    for row, full, reason in zip(res.tokens, free.tokens, res.finish_reasons):
        text = decode(full)
        at = find_stop(text, HUMANEVAL_STOPS)
        assert at is not None, "the toy vocabulary should meet a stop within 40 tokens"
        # the row ends with the token that completed the first stop sequence
        n = next(k for k in range(1, len(full) + 1)
                 if find_stop(decode(full[:k]), HUMANEVAL_STOPS) is not None)
        assert row == full[:n] and reason == "stop"
        assert truncate_at_stop(decode(row), HUMANEVAL_STOPS) == text[:at]
        assert not any(s in text[:at] for s in HUMANEVAL_STOPS)


@pytest.mark.req("INF-03")
def test_max_new_tokens_and_batch_independence(engine):
    prompts = _prompts(4, (2, 14, 8, 5))
    batch = _gen(engine, prompts, max_new_tokens=7, eos_id=None)
    assert [len(t) for t in batch.tokens] == [7] * 4
    for p, got in zip(prompts, batch.tokens):
        alone = _gen(engine, [p], max_new_tokens=7, eos_id=None)
        assert alone.tokens[0] == got


# ---- TOK-02 on the real vocabulary -------------------------------------------------------
@pytest.mark.req("TOK-02")
def test_padding_ids_are_never_sampled_even_when_favoured(tiny_model):
    """The tiny preset (151,808 rows) with the head rigged so ids 151,665.. win every argmax:
    sampling, the MTP draft (which shares the head) and the rejection residual never
    produce them (greedy is covered by the property test above)."""
    from pythoncoder.data.tokenizer import EOS_ID as TOKENIZER_EOS
    from pythoncoder.data.tokenizer import PADDING_IDS

    assert (NUM_REAL_TOKENS, 151_808, EOS_ID) == (PADDING_IDS.start, PADDING_IDS.stop,
                                                 TOKENIZER_EOS)
    rigged = nnx.clone(tiny_model)
    # Real ids get logit 0 everywhere; the best of 143 random padding columns is > 0.
    rigged.lm_head.kernel[...] = rigged.lm_head.kernel[...].at[:, :NUM_REAL_TOKENS].set(0.0)
    logits = rigged(jnp.asarray([[1, 2, 3]], jnp.int32))[0, -1]
    assert int(jnp.argmax(logits)) >= NUM_REAL_TOKENS  # the rig works
    engine = Engine(rigged)
    prompts = _prompts(5, (4, 9), vocab=NUM_REAL_TOKENS)
    # Speculative sampling draws from the target, the draft and the rejection residual.
    res = _gen(engine, prompts, max_new_tokens=8, eos_id=None, speculative=True,
                          sampling=SamplingConfig(temperature=1.0))
    assert res.stats["drafted"] > 0
    assert all(0 <= t < NUM_REAL_TOKENS for row in res.tokens for t in row)
