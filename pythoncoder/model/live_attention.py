"""Cached attention that reads only the live part of the KV cache.

With a preallocated cache of ``S`` slots and new tokens written at ``index .. index+T-1``,
no query may see a slot at or past ``live = index + T`` (the mask is causal on slots), so
those slots contribute exact zeros to both softmaxes and to ``A V``.  Reading them costs
bandwidth only.  ``live_differential_map`` therefore slices the cache to the smallest of
a few static lengths (buckets ``MIN_BUCKET * 2^j`` = 128 * 2^j, capped at ``S``) that
covers ``live`` and
runs the ordinary :func:`~pythoncoder.model.reference_attention.blocked_differential_map` (or the
Pallas decode kernel) on that prefix, chosen with ``lax.switch`` (one compiled branch per
bucket, picked on the device).  The model passes the cache of every layer, stacked, with
the layer index, and the bucket is sliced out of that layer inside the branch.

The differential floor ``max(p1 - lam * p2, 0)`` needs both maps normalised over every
key the query may see; a bucket holds all of them (the full live prefix), so both
softmaxes and the floor are computed exactly as over the full cache, only without the
trailing masked slots (so sums may differ in the last ulp from a reordered reduction).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pythoncoder.model.reference_attention import blocked_differential_map

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
                          gqa_ratio: int, block: int, min_bucket: int = MIN_BUCKET,
                          layer=None, kernel=None):
    """The differential map over cache slots ``[0, bucket(live))`` only.

    ``k_cache``/``v_cache``/``k_seg``: one layer's full cache (B, S, ...), or, with
    ``layer`` (an int32 scalar), every layer's stacked (L, B, S, ...): the bucket is then
    sliced out of layer ``layer`` directly, so nothing but the live bucket of that layer is
    read (no per-layer copy of the whole cache).  ``live``: int32 scalar, the slots
    written so far including this call's tokens (``index + T``).  ``kernel`` (optional):
    ``kernel(q, k, v, lam, q_slots, k_seg, q_seg, live)`` computes the map over the bucket
    instead of ``blocked_differential_map`` (the Pallas decode kernel).
    """
    if layer is None:  # one layer's cache: a stack of one (a free reshape)
        k_cache, v_cache, k_seg = k_cache[None], v_cache[None], k_seg[None]
        layer = 0
    layer = jnp.asarray(layer, jnp.int32)
    S = k_cache.shape[2]
    sizes = buckets(S, min_bucket)

    def take(x, n):  # layer ``layer``, slots [0, n): (B, n, ...)
        start = (layer,) + (jnp.zeros((), jnp.int32),) * (x.ndim - 1)
        return jax.lax.dynamic_slice(x, start, (1, x.shape[1], n, *x.shape[3:]))[0]

    def branch(n):
        def run(q, k, v, lam, q_slots, k_seg, q_seg, live):
            k_n, v_n, seg_n = take(k, n).astype(q.dtype), take(v, n).astype(q.dtype), \
                take(k_seg, n)
            if kernel is not None:
                return kernel(q, k_n, v_n, lam, q_slots, seg_n, q_seg, live)
            return blocked_differential_map(
                q, k_n, v_n, lam, q_slots, jnp.arange(n, dtype=jnp.int32), q_seg, seg_n,
                gqa_ratio=gqa_ratio, block=block)
        return run

    live = jnp.asarray(live, jnp.int32)
    args = (q, k_cache, v_cache, lam, q_slots, k_seg, q_seg, live)
    if len(sizes) == 1:
        return branch(S)(*args)
    which = jnp.clip(jnp.searchsorted(jnp.asarray(sizes, jnp.int32), live), 0, len(sizes) - 1)
    return jax.lax.switch(which, [branch(n) for n in sizes], *args)
