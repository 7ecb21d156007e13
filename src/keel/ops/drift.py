"""Drift and train/serve skew: is recent production traffic still like what was evaluated?

:func:`detect_drift` compares a *reference* sample of query embeddings (the release's eval
dataset, for train/serve skew, or a past production window) with a *current* sample (recent
production queries), and optionally the top retrieval scores and refusals of both:

``mean_shift``
    Cosine distance between the two mean embeddings (0 = same direction).
``mmd`` / ``mmd_p_value``
    The (biased) squared maximum mean discrepancy with an RBF kernel whose bandwidth is the
    median pairwise distance within the reference, and a permutation p-value. One kernel
    matrix over the pooled sample is built once; each permutation only relabels indices.
``top_score_ks`` / ``top_score_p_value``
    Two-sample Kolmogorov-Smirnov test on the top retrieval score of each query.
``ood_rate``
    The share of current queries whose top score is below ``ood_threshold``.
``refusal_rate_change``
    Current refusal rate minus reference refusal rate.

Everything is seeded: the same inputs and seed give the same report. This module takes plain
arrays; gathering embeddings and scores from traces is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from keel.errors import UsageError

MIN_ROWS = 10

__all__ = ["DriftReport", "detect_drift"]


@dataclass(frozen=True)
class DriftReport:
    """What :func:`detect_drift` measured, and whether it is worth an alert."""

    n_reference: int
    n_current: int
    mean_shift: float
    mmd: float
    mmd_p_value: float
    top_score_ks: float | None
    top_score_p_value: float | None
    ood_rate: float | None
    refusal_rate_change: float | None
    alert: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _embeddings(name: str, value: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2:
        raise UsageError(f"{name} embeddings must be a 2-D array (rows x dims), got {array.ndim}-D")
    if array.shape[0] < MIN_ROWS:
        raise UsageError(f"{name} has {array.shape[0]} rows; drift needs at least {MIN_ROWS}")
    if not np.all(np.isfinite(array)):
        raise UsageError(f"{name} embeddings contain NaN or infinite values")
    return array


def _vector(name: str, value: ArrayLike | None) -> NDArray[np.float64] | None:
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise UsageError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        raise UsageError(f"{name} contains NaN or infinite values")
    return array


def _subsample(
    array: NDArray[np.float64], limit: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    if array.shape[0] <= limit:
        return array
    return array[np.sort(rng.choice(array.shape[0], size=limit, replace=False))]


def _cosine_distance(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0 if na == nb else 1.0
    return float(np.clip(1.0 - float(a @ b) / (na * nb), 0.0, 2.0))


def _squared_distances(z: NDArray[np.float64]) -> NDArray[np.float64]:
    sq: NDArray[np.float64] = np.einsum("ij,ij->i", z, z)
    d2: NDArray[np.float64] = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return d2


def _mmd_test(
    reference: NDArray[np.float64],
    current: NDArray[np.float64],
    permutations: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """``(mmd², p_value)`` for an RBF kernel with the reference's median-distance bandwidth."""
    n, m = reference.shape[0], current.shape[0]
    d2 = _squared_distances(np.vstack([reference, current]))
    ref_d2 = d2[:n, :n][np.triu_indices(n, k=1)]
    median = float(np.median(ref_d2))
    if median <= 0.0:  # a degenerate reference (all rows equal): fall back to the pooled sample
        pooled = d2[np.triu_indices(n + m, k=1)]
        positive = pooled[pooled > 0.0]
        median = float(np.median(positive)) if positive.size else 1.0
    kernel = np.exp(-d2 / (2.0 * median))  # exp(-d² / 2h²) with h² = median squared distance

    # MMD²_biased = wᵀ K w, w = +1/n on reference rows and -1/m on current rows.
    weights = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    observed = float(weights @ kernel @ weights)
    if permutations <= 0:
        return max(observed, 0.0), 1.0
    permuted = np.stack([weights[rng.permutation(n + m)] for _ in range(permutations)])
    null = np.einsum("pi,pi->p", permuted @ kernel, permuted)
    exceed = int(np.count_nonzero(null >= observed - 1e-12))
    return max(observed, 0.0), (1 + exceed) / (1 + permutations)


def _rate(values: NDArray[np.float64]) -> float:
    return float(np.mean(values != 0.0))


def detect_drift(
    reference: ArrayLike,
    current: ArrayLike,
    *,
    reference_top_scores: ArrayLike | None = None,
    current_top_scores: ArrayLike | None = None,
    reference_refusals: Sequence[bool] | ArrayLike | None = None,
    current_refusals: Sequence[bool] | ArrayLike | None = None,
    ood_threshold: float = 0.3,
    alpha: float = 0.01,
    max_ood_rate: float = 0.25,
    max_refusal_increase: float = 0.15,
    permutations: int = 500,
    seed: int = 0,
    max_samples: int = 500,
) -> DriftReport:
    """Compare current query embeddings (and scores, refusals) against a reference sample.

    ``reference`` and ``current`` are ``(rows, dims)`` arrays with at least 10 rows each and
    the same ``dims``; each side is subsampled (seeded) to ``max_samples`` rows. Top scores and
    refusals are optional: the measures that need them are ``None`` when they are missing.
    Raises :class:`~keel.errors.UsageError` on bad input.
    """
    ref = _embeddings("reference", reference)
    cur = _embeddings("current", current)
    if ref.shape[1] != cur.shape[1]:
        raise UsageError(
            f"reference and current embeddings differ in dimension ({ref.shape[1]} vs "
            f"{cur.shape[1]}); were they made by the same model?"
        )
    if not 0.0 < alpha < 1.0:
        raise UsageError(f"alpha must be between 0 and 1, got {alpha}")
    if max_samples < MIN_ROWS:
        raise UsageError(f"max_samples must be at least {MIN_ROWS}, got {max_samples}")
    if permutations < 0:
        raise UsageError(f"permutations must not be negative, got {permutations}")

    rng = np.random.default_rng(seed)
    ref = _subsample(ref, max_samples, rng)
    cur = _subsample(cur, max_samples, rng)
    reasons: list[str] = []

    mean_shift = _cosine_distance(ref.mean(axis=0), cur.mean(axis=0))
    mmd, mmd_p = _mmd_test(ref, cur, permutations, rng)
    if mmd_p < alpha:
        reasons.append(
            f"query embeddings shifted: MMD²={mmd:.4f}, p={mmd_p:.4g} < {alpha} "
            f"(mean shift {mean_shift:.4f})"
        )

    ref_scores = _vector("reference_top_scores", reference_top_scores)
    cur_scores = _vector("current_top_scores", current_top_scores)
    ks: float | None = None
    ks_p: float | None = None
    if ref_scores is not None and cur_scores is not None:
        result = stats.ks_2samp(ref_scores, cur_scores)
        ks, ks_p = float(result.statistic), float(result.pvalue)
        if ks_p < alpha:
            direction = "fell" if np.median(cur_scores) < np.median(ref_scores) else "rose"
            reasons.append(
                f"top retrieval scores {direction}: median {np.median(ref_scores):.3f} -> "
                f"{np.median(cur_scores):.3f}, KS={ks:.3f}, p={ks_p:.4g} < {alpha}"
            )

    ood_rate: float | None = None
    if cur_scores is not None:
        ood_rate = float(np.mean(cur_scores < ood_threshold))
        if ood_rate > max_ood_rate:
            reasons.append(
                f"{ood_rate:.0%} of current queries are out of distribution (top score < "
                f"{ood_threshold}), above {max_ood_rate:.0%}"
            )

    ref_refusals = _vector("reference_refusals", reference_refusals)
    cur_refusals = _vector("current_refusals", current_refusals)
    refusal_change: float | None = None
    if ref_refusals is not None and cur_refusals is not None:
        before, after = _rate(ref_refusals), _rate(cur_refusals)
        refusal_change = after - before
        if refusal_change > max_refusal_increase:
            reasons.append(
                f"refusal rate rose from {before:.0%} to {after:.0%} "
                f"(+{refusal_change:.0%} > {max_refusal_increase:.0%})"
            )

    return DriftReport(
        n_reference=int(ref.shape[0]),
        n_current=int(cur.shape[0]),
        mean_shift=mean_shift,
        mmd=mmd,
        mmd_p_value=mmd_p,
        top_score_ks=ks,
        top_score_p_value=ks_p,
        ood_rate=ood_rate,
        refusal_rate_change=refusal_change,
        alert=bool(reasons),
        reasons=reasons,
    )
