"""INF-02: MTP self-speculative decoding (draft 1, verify in one pass).

Greedy speculation must give exactly the plain greedy tokens.  Random models draft
almost nothing right (acceptance ~1/vocab), which would leave the accept path untested,
so the property also draws "agreeable" random models (``pythoncoder.testing.models``)
whose acceptance ranges from a few percent to 100%, with rows of one batch accepting and
rejecting independently.  The sampling variant is checked against exact probabilities.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from pythoncoder.infer.engine import Engine, left_pad
from pythoncoder.infer.sampling import SamplingConfig, filtered_logits, speculative_accept
from pythoncoder.model import build_model
from pythoncoder.testing.models import agreeable_model

PROMPT_LEN, CACHE_LEN, MAX_NEW = 16, 64, 24


@pytest.fixture(scope="module")
def spec_cfg(make_micro):
    return make_micro(num_layers=2)


@pytest.fixture(scope="module")
def engine(spec_cfg):
    return Engine(build_model(spec_cfg, seed=0))


def _params(cfg, seed: int, kind: str):
    if kind == "random":
        return nnx.state(build_model(cfg, seed))
    trunk, noise = {"agree": (0.0, 0.0), "mostly": (0.01, 0.3), "sometimes": (0.03, 1.0)}[kind]
    return nnx.state(agreeable_model(cfg, seed, trunk_scale=trunk, mtp_noise=noise))


def _generate(engine, prompts, params, **kw):
    kw.setdefault("cache_len", CACHE_LEN)
    return engine.generate(prompts, prompt_len=PROMPT_LEN, params=params, **kw)


@pytest.mark.req("INF-02")
@settings(max_examples=15)  # two generations per example
@given(seed=st.integers(0, 2**16), kind=st.sampled_from(["random", "agree", "mostly",
                                                         "sometimes"]),
       lengths=st.sampled_from([1, 3]).flatmap(
           lambda b: st.lists(st.integers(1, PROMPT_LEN), min_size=b, max_size=b)),
       max_new=st.integers(1, MAX_NEW), eos=st.booleans())
def test_greedy_speculation_equals_plain_greedy(engine, spec_cfg, seed, kind, lengths, max_new,
                                                eos):
    params = _params(spec_cfg, seed, kind)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, spec_cfg.vocab_size, n).tolist() for n in lengths]
    eos_id = int(rng.integers(0, spec_cfg.vocab_size)) if eos else None
    plain = _generate(engine, prompts, params, max_new_tokens=max_new, eos_id=eos_id)
    spec = _generate(engine, prompts, params, max_new_tokens=max_new, eos_id=eos_id,
                     speculative=True)
    assert spec.tokens == plain.tokens
    assert spec.finish_reasons == plain.finish_reasons
    assert 0.0 <= spec.stats["acceptance_rate"] <= 1.0 or max_new == 1


@pytest.mark.req("INF-02")
def test_verify_logits_are_the_decode_logits(engine, spec_cfg):
    """Why the tokens agree: for its first token the T=2 verify forward computes the logits
    of the one-token decode step from the same weights, cache, positions and masks, and
    takes the same argmax.  Only the matmul tiling may differ with the row count, which in
    fp32 moves logits by a few ulp (sometimes bitwise equal, e.g. batch 2 on XLA:CPU).  A
    greedy choice can then differ only on a near-tie below ~1e-6, which random models with
    continuous weights essentially never produce; the property above checks the tokens."""
    params = _params(spec_cfg, 1, "random")
    rng = np.random.default_rng(1)
    tokens, pads = left_pad([rng.integers(0, 512, n).tolist() for n in (16, 5, 11)])
    state, _, _ = engine.prefill(tokens, pads, cache_len=CACHE_LEN, key=jax.random.PRNGKey(0),
                                 params=params)
    copy = jax.tree.map(jnp.copy, state)
    _, _, decode_logits = engine.decode(state, params=params)
    _, _, verify_logits = engine.speculate(copy, params=params)
    np.testing.assert_allclose(np.asarray(verify_logits[:, 0]), np.asarray(decode_logits),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.req("INF-02")
def test_acceptance_rate_is_reported_and_mixed_rows_stay_exact(engine, spec_cfg):
    params = _params(spec_cfg, 7, "mostly")
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, 512, n).tolist() for n in (3, 16, 9, 12)]
    plain = _generate(engine, prompts, params, max_new_tokens=MAX_NEW, eos_id=None)
    spec = _generate(engine, prompts, params, max_new_tokens=MAX_NEW, eos_id=None,
                     speculative=True)
    assert spec.tokens == plain.tokens
    s = spec.stats
    assert s["acceptance_rate"] == pytest.approx(s["accepted"] / s["drafted"], abs=1e-12)
    assert 0.05 < s["acceptance_rate"] < 0.95, s  # rows accepted and rejected
    assert s["steps"] < plain.stats["steps"]


@pytest.mark.req("INF-02")
def test_full_agreement_halves_the_steps(engine, spec_cfg):
    params = _params(spec_cfg, 3, "agree")
    prompt = np.random.default_rng(3).integers(0, 512, 10).tolist()
    plain = _generate(engine, [prompt], params, max_new_tokens=MAX_NEW, eos_id=None)
    spec = _generate(engine, [prompt], params, max_new_tokens=MAX_NEW, eos_id=None,
                     speculative=True)
    assert spec.tokens == plain.tokens
    assert spec.stats["acceptance_rate"] == 1.0
    # one token from the prefill, then two per verify step
    assert spec.stats["steps"] == (MAX_NEW - 1 + 1) // 2


@pytest.mark.req("INF-02")
def test_full_cache_falls_back_to_plain_steps(engine, spec_cfg):
    """With no slot left for a 2-token verify, the engine finishes with 1-token steps."""
    params = _params(spec_cfg, 4, "mostly")
    prompt = np.random.default_rng(4).integers(0, 512, 16).tolist()
    plain = _generate(engine, [prompt], params, max_new_tokens=MAX_NEW, eos_id=None)
    spec = _generate(engine, [prompt], params, max_new_tokens=MAX_NEW, eos_id=None,
                     speculative=True, cache_len=PROMPT_LEN + MAX_NEW)
    assert spec.tokens == plain.tokens
    assert spec.finish_reasons == ["length"]


@pytest.mark.req("INF-02")
def test_rejection_sampling_emits_the_target_distribution():
    """min(1, p/q) acceptance with a norm(max(p - q, 0)) replacement gives exactly p."""
    rng = np.random.default_rng(0)
    V, n = 6, 200_000
    p = rng.dirichlet(np.full(V, 2.0))
    q = rng.dirichlet(np.full(V, 2.0))
    p[2], q[4] = 0.0, 0.0  # the draft may propose a token p rules out, and miss one p wants
    p, q = p / p.sum(), q / q.sum()
    k_draft, k_accept = jax.random.split(jax.random.PRNGKey(0))
    pB = jnp.broadcast_to(jnp.asarray(p, jnp.float32), (n, V))
    qB = jnp.broadcast_to(jnp.asarray(q, jnp.float32), (n, V))
    draft = jax.random.categorical(k_draft, jnp.log(qB), axis=-1)
    accepted, token = speculative_accept(pB, qB, draft, k_accept)
    freq = np.bincount(np.asarray(token), minlength=V) / n
    sigma = np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(freq, p, rtol=0, atol=float(5 * sigma.max() + 1e-9))
    assert freq[2] == 0.0
    expected_acceptance = np.minimum(p, q).sum()
    np.testing.assert_allclose(float(np.mean(np.asarray(accepted))), expected_acceptance,
                               rtol=0, atol=0.01)


@pytest.mark.req("INF-02", "INF-03")
def test_speculative_sampling_matches_exact_joint_distribution(spec_cfg):
    """2048 identical rows, temperature 1 with top-k 3: the empirical joint law of the first
    two tokens (the second one from a verify step) matches the model's exact law."""
    params_model = agreeable_model(spec_cfg, 11, trunk_scale=0.01, mtp_noise=0.3,
                                   head_scale=3.0)
    engine = Engine(params_model)
    sampling = SamplingConfig(temperature=1.0, top_k=3)
    prompt = np.random.default_rng(11).integers(0, 512, 8).tolist()
    n = 2048
    res = engine.generate([prompt] * n, max_new_tokens=2, sampling=sampling, seed=5,
                          eos_id=None, speculative=True, cache_len=32, prompt_len=8)
    pairs = np.asarray(res.tokens)  # (n, 2)

    fwd = nnx.jit(lambda m, t: m(t))

    def law(tokens):  # right-padded to 16: causal, so one compile serves both lengths
        padded = np.zeros((1, 16), np.int32)
        padded[0, :len(tokens)] = tokens
        logits = fwd(params_model, jnp.asarray(padded))[:, len(tokens) - 1]
        return np.asarray(jax.nn.softmax(filtered_logits(logits, sampling)))[0]

    p1 = law(prompt)
    for a in np.flatnonzero(p1):
        p2 = law(prompt + [int(a)])
        for b in np.flatnonzero(p2):
            expect = p1[a] * p2[b]
            got = np.mean((pairs[:, 0] == a) & (pairs[:, 1] == b))
            sigma = np.sqrt(expect * (1 - expect) / n)
            np.testing.assert_allclose(got, expect, rtol=0, atol=5 * sigma + 1e-3,
                                       err_msg=f"pair ({a}, {b})")
    assert set(pairs[:, 0].tolist()) <= set(np.flatnonzero(p1).tolist())
    assert 0.2 < res.stats["acceptance_rate"] < 1.0  # drafts were accepted and rejected

