"""Evaluation metrics of the paper's protocol (SPEC §7).

* pass@1 — mean correctness over all k samples of a question, averaged over questions;
* cons@k — correctness of the majority answer among the k samples (answers that are
  mathematically equivalent are one vote);
* pass@k — the unbiased estimator from n samples with c correct, ``1 − C(n−c, k)/C(n, k)``
  (Chen et al. 2021), averaged over questions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one question: n samples, c of them correct, k ≤ n."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_vote(keys: Sequence[str | None], same: Callable[[str, str], bool] = str.__eq__) -> int | None:
    """Index of a representative sample of the largest group of equivalent answers (ties:
    the group seen first); samples without an answer (None) do not vote. None if nobody voted."""
    groups: list[list[int]] = []          # sample indices per group; groups[g][0] is its representative
    for i, key in enumerate(keys):
        if key is None:
            continue
        for g in groups:
            if same(keys[g[0]], key):
                g.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None
    best = max(groups, key=len)           # max keeps the first of equal-size groups
    return best[0]


def pass_k_values(k: int) -> list[int]:
    """The pass@k values reported for k samples: 1, 2, 4, … up to k (and k itself)."""
    out, v = [], 1
    while v < k:
        out.append(v)
        v *= 2
    return out + [k]
