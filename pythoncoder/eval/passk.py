"""Unbiased pass@k (Chen et al. 2021, section 2.1) and best-of-n curves (EVAL-01)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

# k values reported by default, each only where every problem has at least k samples.
DEFAULT_KS = (1, 5, 10, 20, 50, 100, 200)


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n is correct), c correct.

    Equals ``1 - C(n-c, k) / C(n, k)``, computed in the stable product form
    ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` so that no huge binomial is ever formed.
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """Average of :func:`pass_at_k` over problems given as ``(n, c)`` pairs."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("no problems")
    return float(np.mean(values))


def pass_at_ks(counts: Mapping[str, tuple[int, int]],
               ks: Iterable[int] = DEFAULT_KS) -> dict[int, float]:
    """``{k: mean pass@k}`` for each ``k`` not above the smallest per-problem ``n``."""
    if not counts:
        return {}
    n_min = min(n for n, _ in counts.values())
    return {k: mean_pass_at_k(counts.values(), k) for k in sorted(set(ks)) if 1 <= k <= n_min}


def best_of_n(counts: Mapping[str, tuple[int, int]]) -> dict[int, float]:
    """Best-of-n selection by the tests: ``{k: pass@k}`` for every ``k = 1 .. n``.

    With ``n`` samples per problem, picking the best of ``k`` of them (an oracle that
    runs the tests) succeeds with probability pass@k; the curve ends at ``k = n``, the
    fraction of problems with at least one correct sample.
    """
    if not counts:
        return {}
    return pass_at_ks(counts, range(1, min(n for n, _ in counts.values()) + 1))
