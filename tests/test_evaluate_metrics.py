"""Metric functions against sklearn and hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss

from kdq.evaluate import accuracy, ece, gap_closed, log_loss
from kdq.evaluate.metrics import softmax


def _probs(n, seed):
    rng = np.random.default_rng(seed)
    return softmax(rng.normal(size=(n, 3)) * 2), rng.integers(0, 3, size=n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_loss_equals_sklearn(seed):
    probs, labels = _probs(200, seed)
    assert log_loss(probs, labels) == pytest.approx(sk_log_loss(labels, probs, labels=[0, 1, 2]), rel=1e-12)


def test_log_loss_clips_and_renormalizes_like_the_competition():
    # row 0: true class has probability 0 -> clipped to 1e-15, then the row is renormalized
    probs = np.array([[0.0, 1.0, 0.0], [0.4, 0.2, 0.2]])
    labels = np.array([0, 0])
    row0 = 1e-15 / (1e-15 + (1 - 1e-15) + 1e-15)
    row1 = 0.4 / 0.8  # an unnormalized row counts as its normalized self
    assert log_loss(probs, labels) == pytest.approx(-(math.log(row0) + math.log(row1)) / 2, rel=1e-12)
    assert log_loss(probs, labels) < 35  # bounded by -log(1e-15) ~ 34.5 per row


def test_accuracy_and_ece_by_hand():
    probs = np.array(
        [
            [0.9, 0.05, 0.05],  # conf .9, correct
            [0.8, 0.1, 0.1],  # conf .8, wrong
            [0.2, 0.5, 0.3],  # conf .5, correct
            [0.1, 0.3, 0.6],
        ]
    )  # conf .6, correct
    labels = np.array([0, 1, 1, 2])
    assert accuracy(probs, labels) == pytest.approx(0.75)
    # 2 bins: [0, .5) empty; [.5, 1]: all four, acc .75, mean conf .7 -> |.75 - .7| = .05
    assert ece(probs, labels, n_bins=2) == pytest.approx(0.05)
    # 10 bins: .9 -> bin 9 (acc 1, |1-.9|=.1), .8 -> bin 8 (|0-.8|), .5 -> bin 5 (|1-.5|), .6 -> bin 6 (|1-.6|)
    assert ece(probs, labels, n_bins=10) == pytest.approx((0.1 + 0.8 + 0.5 + 0.4) / 4)


def test_perfectly_calibrated_predictions_have_small_ece():
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(size=(20000, 3)))
    labels = np.array([rng.choice(3, p=p) for p in probs])  # labels drawn from the predictions
    assert ece(probs, labels) < 0.02
    assert ece(np.roll(probs, 1, axis=1), labels) > 0.1  # the same confidences, wrong classes


def test_metric_inputs_are_validated():
    probs, labels = _probs(4, 0)
    with pytest.raises(ValueError, match="outside"):
        log_loss(probs, np.array([0, 1, 2, -1]))
    with pytest.raises(ValueError, match="shape"):
        accuracy(probs, labels[:3])
    with pytest.raises(ValueError, match="finite"):
        log_loss(np.where(probs > 0.5, np.nan, probs), labels)
    with pytest.raises(ValueError, match="n_bins"):
        ece(probs, labels, n_bins=0)


def test_gap_closed():
    assert gap_closed(0.90, 1.00, 0.95)[0] == pytest.approx(0.5)
    assert gap_closed(0.90, 1.00, 0.90)[0] == pytest.approx(1.0)
    value, note = gap_closed(1.00, 0.95, 0.97)  # baseline already beats the teacher
    assert value is None and "undefined" in note
