"""DROP-01: every dropout site draws its own mask (issue 28).

A training forward applies dropout twice per layer (attention branch, MLP branch).  The
masks are read off each site's input and output (the model's ``Dropout`` is wrapped to hand both
to the host), in the unrolled and in the scanned layer loop, and compared with what the
requirement implies, not with the code: each keeps ``1 - p`` of its entries (within five
binomial standard deviations), scales the kept ones by ``1 / (1 - p)``, and two masks
drawn independently agree on about ``(1-p)^2 + p^2`` of the entries (0.82 at p = 0.1),
never on all of them, so no two sites (two layers, or the two branches of one layer)
share a mask.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from flax import nnx

from pythoncoder.model import build_model
from pythoncoder.model.transformer import Dropout

P = 0.1


def record_masks(monkeypatch, model, tokens, key) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(input, output)`` of every dropout call of one training forward, in call order."""
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = Dropout.__call__

    def spy(self, x, *a, **kw):
        y = real(self, x, *a, **kw)
        jax.debug.callback(lambda x, y: seen.append((np.asarray(x), np.asarray(y))), x, y,
                           ordered=True)
        return y

    monkeypatch.setattr(Dropout, "__call__", spy)
    forward = nnx.jit(lambda m, t, k: m.hidden_states(t, deterministic=False,
                                                       dropout_key=k)[0])  # traced anew
    jax.block_until_ready(forward(model, tokens, key))
    jax.effects_barrier()
    monkeypatch.setattr(Dropout, "__call__", real)
    return seen


@pytest.mark.req("DROP-01")
@pytest.mark.parametrize("scan_layers", [False, True])
def test_each_layer_and_branch_draws_its_own_mask_at_rate_p(make_micro, monkeypatch,
                                                            scan_layers):
    cfg = make_micro(num_layers=3, dropout_rate=P, scan_layers=scan_layers)
    model = build_model(cfg, seed=0)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 64), 0, cfg.vocab_size)
    seen = record_masks(monkeypatch, model, tokens, jax.random.PRNGKey(7))
    assert len(seen) == 2 * cfg.num_layers  # attention and MLP branch of every layer
    n = seen[0][0].size
    masks = []
    for x, y in seen:
        assert np.all(x != 0)  # every entry's fate is visible in the output
        kept = y != 0
        rate = 1.0 - kept.mean()
        assert abs(rate - P) < 5 * np.sqrt(P * (1 - P) / n), rate
        np.testing.assert_allclose(y[kept], x[kept] / (1 - P), rtol=1e-6, atol=0)
        masks.append(kept)
    expected = (1 - P) ** 2 + P ** 2
    for (i, a), (j, b) in itertools.combinations(enumerate(masks), 2):
        agree = (a == b).mean()
        assert abs(agree - expected) < 0.02, (i, j, agree)  # independent, not shared
