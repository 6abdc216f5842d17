"""Cached attention that reads only the live part of the KV cache.

With a preallocated cache of ``S`` slots and new tokens written at ``index .. index+T-1``,
no query may see a slot at or past ``live = index + T`` (the mask is causal on slots), so
those slots contribute exact zeros to both softmaxes and to ``A V``.  Reading them costs
bandwidth only.  ``live_differential_map`` therefore slices the cache to the smallest of
a few static lengths (buckets ``MIN_BUCKET * 2^j`` = 128 * 2^j, capped at ``S``) that
covers ``live`` and
runs the ordinary :func:`~pythoncoder.model.attention.blocked_differential_map` on that
prefix, chosen with ``lax.switch`` (one compiled branch per bucket, picked on the device).

The differential floor ``max(p1 - lam * p2, 0)`` needs both maps normalised over every
key the query may see; a bucket holds all of them (the full live prefix), so both
softmaxes and the floor are computed exactly as over the full cache, only without the
trailing masked slots (so sums may differ in the last ulp from a reordered reduction).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MIN_BUCKET = 128


def buckets(num_slots: int, min_bucket: int = MIN_BUCKET) -> tuple[int, ...]:
    """Static key lengths: ``min_bucket * 2^j`` below ``num_slots``, then ``num_slots``."""
    out, b = [], min_bucket
    while b < num_slots:
        out.append(b)
        b *= 2
    out.append(num_slots)
    return tuple(out)


def live_differential_map(q, k_cache, v_cache, lam, q_slots, k_seg, q_seg, live, *,
                          gqa_ratio: int, block: int, min_bucket: int = MIN_BUCKET):
    """The differential map over cache slots ``[0, bucket(live))`` only.

    ``k_cache``/``v_cache``/``k_seg``: one layer's full cache (B, S, ...); ``live``: int32
    scalar, the slots written so far including this call's tokens (``index + T``).
    """
    from pythoncoder.model.attention import blocked_differential_map

    S = k_cache.shape[1]
    sizes = buckets(S, min_bucket)

    def branch(n):
        def run(q, k, v, lam, q_slots, k_seg, q_seg):
            return blocked_differential_map(
                q, k[:, :n], v[:, :n], lam, q_slots, jnp.arange(n, dtype=jnp.int32), q_seg,
                k_seg[:, :n], gqa_ratio=gqa_ratio, block=block)
        return run

    args = (q, k_cache, v_cache, lam, q_slots, k_seg, q_seg)
    if len(sizes) == 1:
        return branch(S)(*args)
    which = jnp.searchsorted(jnp.asarray(sizes, jnp.int32), jnp.asarray(live, jnp.int32))
    which = jnp.clip(which, 0, len(sizes) - 1)
    return jax.lax.switch(which, [branch(n) for n in sizes], *args)
