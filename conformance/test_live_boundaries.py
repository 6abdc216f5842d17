"""INF-01 / INF-06: cached calls whose live length sits on and around the boundaries of the
live buckets (128, 256, 512 slots) and of the decode kernel's key blocks (128).

A cached call writes ``T`` tokens at slots ``index .. index+T-1`` and must see every slot
below ``live = index + T``.  The cache is filled once by a prefill of the whole sequence
(the slots past a query are masked by causality, so they change nothing); then prefill,
decode (``T = 1``) and verification (``T`` up to 8) calls are made at chosen indices, and
their logits must be the full forward's (no cache) at the same positions.  Cases where
``index + 1`` and ``index + T`` fall in different buckets or key blocks fail if the
attention reads only the first new token's live prefix; cases ending exactly on a
boundary check the bucket is not one too small.  Tolerance as in
``test_inference_cache.py`` (fp32, 2e-5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pythoncoder.model import build_model

ATOL = RTOL = 2e-5
N, S = 400, 512  # tokens, cache slots: buckets 128, 256, 512

# (index, T): decode, verification and chunked prefill around 128, 256 (buckets and key
# blocks) and 384 (a key block inside the 512 bucket)
BUCKET_CASES = [
    (127, 1), (128, 1), (255, 1), (256, 1),            # decode: live 128, 129, 256, 257
    (126, 2), (127, 2),                                # live 128 (on it), 129 (across)
    (124, 4), (125, 4), (127, 4), (253, 4), (254, 4),  # 128 on; 129, 131, 257, 258 across
    (120, 8), (121, 8), (127, 8), (249, 8), (250, 8),  # 128 on; 129, 135; 257, 258
]
BLOCK_CASES = [(382, 4), (380, 8), (383, 1), (376, 8)]  # 386, 388 across 384; 384 on it
KERNEL_CASES = [(125, 4), (121, 8)] + BLOCK_CASES  # across 128 (bucket and block); 384
PREFILL_CASES = [(0, 130), (68, 60), (100, 60), (196, 60)]  # live 130, 128, 160, 256


@pytest.fixture(scope="module")
def setup(make_micro):
    cfg = make_micro(num_layers=2, attn_block_size=8)
    tokens = jax.random.randint(jax.random.PRNGKey(3), (2, N), 0, cfg.vocab_size)
    models_by_impl = {impl: build_model(cfg.replace(attention_impl=impl), seed=0)
                      for impl in ("reference", "pallas")}
    full = np.asarray(jax.jit(lambda m, t: m(t))(models_by_impl["reference"], tokens))

    def cached(impl):
        graphdef, params = nnx.split(models_by_impl[impl])

        @jax.jit
        def call(params, toks, cache, index):
            model = nnx.merge(graphdef, params)
            h, cache = model.hidden_states(toks, cache=cache, cache_index=index)
            return model.logits(h), cache

        return lambda toks, cache, index: call(params, toks, cache, jnp.int32(index))

    ref = cached("reference")
    empty = models_by_impl["reference"].init_cache(2, S)
    # the cache is written whatever the attention reads; the prefill's logits are checked
    # by their own test
    prefill_logits, filled = ref(tokens, empty, 0)
    return tokens, full, filled, {"reference": ref, "pallas": cached("pallas")}, \
        np.asarray(prefill_logits)


def check(setup, impl, index, T):
    tokens, full, filled, calls, _ = setup
    logits, _ = calls[impl](tokens[:, index:index + T], filled, index)
    np.testing.assert_allclose(np.asarray(logits), full[:, index:index + T], rtol=RTOL,
                               atol=ATOL, err_msg=f"{impl} index={index} T={T}")


@pytest.mark.req("INF-01", "INF-06")
def test_prefill_of_the_whole_sequence_equals_the_full_forward(setup):
    _, full, _, _, prefill_logits = setup  # live 400: the 512 bucket
    np.testing.assert_allclose(prefill_logits, full, rtol=RTOL, atol=ATOL)


@pytest.mark.req("INF-01", "INF-06")
@pytest.mark.parametrize(("index", "T"), BUCKET_CASES + PREFILL_CASES)
def test_cached_call_on_bucket_boundaries_equals_the_full_forward(setup, index, T):
    check(setup, "reference", index, T)


@pytest.mark.req("INF-01", "DIFF-06a")
@pytest.mark.parametrize(("index", "T"), KERNEL_CASES)
def test_decode_kernel_on_bucket_and_block_boundaries_equals_the_full_forward(setup, index, T):
    check(setup, "pallas", index, T)
