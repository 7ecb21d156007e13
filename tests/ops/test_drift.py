"""Drift detection on synthetic, normalised gaussian clusters in 32 dims (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from keel.errors import UsageError
from keel.ops.drift import DriftReport, detect_drift

DIMS = 32


def _cluster(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Normalised points around a fixed centre; ``shift`` moves the centre toward another axis."""
    rng = np.random.default_rng(seed)
    centre = np.zeros(DIMS)
    centre[0] = 1.0
    centre[1] = shift
    points = centre * 2.0 + rng.normal(size=(n, DIMS)) * 0.5
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def test_unshifted_sample_does_not_alert() -> None:
    report = detect_drift(_cluster(200, 1), _cluster(200, 2), permutations=200)
    assert isinstance(report, DriftReport)
    assert not report.alert and report.reasons == []
    assert report.mmd_p_value > 0.05
    assert report.mean_shift < 0.01
    assert (report.n_reference, report.n_current) == (200, 200)
    assert report.top_score_ks is None and report.ood_rate is None
    assert report.refusal_rate_change is None


def test_shifted_sample_alerts_with_tiny_p_value() -> None:
    report = detect_drift(_cluster(200, 1), _cluster(200, 2, shift=1.0), permutations=200)
    assert report.alert
    assert report.mmd_p_value == pytest.approx(1 / 201)  # no permutation beats the observed
    assert report.mean_shift > 0.05
    assert report.mmd > 0
    assert any("embeddings shifted" in r for r in report.reasons)


def test_ks_detects_a_drop_in_top_scores() -> None:
    rng = np.random.default_rng(3)
    emb = _cluster(100, 1), _cluster(100, 2)
    before = rng.normal(0.7, 0.05, 100)
    same = detect_drift(
        *emb, reference_top_scores=before, current_top_scores=rng.normal(0.7, 0.05, 100)
    )
    assert same.top_score_p_value is not None and same.top_score_p_value > 0.01
    assert not same.alert
    assert same.ood_rate == 0.0
    dropped = detect_drift(
        *emb, reference_top_scores=before, current_top_scores=rng.normal(0.55, 0.05, 100)
    )
    assert dropped.top_score_ks is not None and dropped.top_score_ks > 0.5
    assert dropped.top_score_p_value is not None and dropped.top_score_p_value < 1e-6
    assert dropped.alert and any("scores fell" in r for r in dropped.reasons)


def test_ood_rate_and_refusal_change() -> None:
    emb = _cluster(50, 1), _cluster(50, 2)
    current = np.array([0.1] * 20 + [0.8] * 30)  # 40% below the 0.3 threshold
    report = detect_drift(*emb, current_top_scores=current)
    assert report.ood_rate == pytest.approx(0.4)
    assert report.top_score_ks is None  # KS needs both sides
    assert report.alert and any("out of distribution" in r for r in report.reasons)
    assert not detect_drift(*emb, current_top_scores=current, max_ood_rate=0.5).alert

    refusals = detect_drift(
        *emb,
        reference_refusals=[True] * 5 + [False] * 45,
        current_refusals=[True] * 20 + [False] * 30,
    )
    assert refusals.refusal_rate_change == pytest.approx(0.3)
    assert refusals.alert and any("refusal rate rose" in r for r in refusals.reasons)
    fewer = detect_drift(*emb, reference_refusals=[1] * 10 + [0] * 40, current_refusals=[0] * 50)
    assert fewer.refusal_rate_change == pytest.approx(-0.2)
    assert not fewer.alert


def test_deterministic_for_a_seed_and_subsamples() -> None:
    ref, cur = _cluster(120, 1), _cluster(120, 2, shift=0.15)
    a = detect_drift(ref, cur, seed=7, max_samples=60, permutations=100)
    b = detect_drift(ref, cur, seed=7, max_samples=60, permutations=100)
    assert a.to_dict() == b.to_dict()
    assert (a.n_reference, a.n_current) == (60, 60)
    assert set(a.to_dict()) >= {"mmd", "mmd_p_value", "alert", "reasons", "mean_shift"}


@pytest.mark.parametrize(
    ("reference", "current"),
    [
        (np.ones((9, DIMS)), np.ones((20, DIMS))),
        (np.ones((20, DIMS)), np.ones((5, DIMS))),
        (np.ones((20, DIMS)), np.ones((20, 16))),
        (np.ones(DIMS), np.ones((20, DIMS))),
    ],
)
def test_bad_inputs_raise_usage_error(reference: np.ndarray, current: np.ndarray) -> None:
    with pytest.raises(UsageError):
        detect_drift(reference, current)


def test_false_alarm_rate_stays_near_alpha() -> None:
    alpha = 0.05
    alerts = sum(
        detect_drift(
            _cluster(30, 2 * i), _cluster(30, 2 * i + 1), alpha=alpha, permutations=200, seed=i
        ).alert
        for i in range(40)
    )
    assert alerts / 40 <= alpha + 0.05
