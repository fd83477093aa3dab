"""Threshold search: the O(n log n) sweep against brute force over every candidate threshold."""
import pytest
import torch

from kexue.models.text import best_threshold
from kexue.models.text.threshold import confusion_at


def metric_of(tp, fp, fn, tn, metric):
    if metric == "acc":
        return (tp + tn) / (tp + fp + fn + tn)
    return 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0


def brute_force(scores, labels, metric):
    """Best metric over thresholds below, between and at every distinct score."""
    values = sorted(set(scores.tolist()))
    candidates = [values[0] - 1.0] + values
    return max(metric_of(*confusion_at(scores, labels, t), metric) for t in candidates)


@pytest.mark.parametrize("metric", ["acc", "f1"])
def test_matches_brute_force_with_ties(device, metric):
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(1, 300, (1,), generator=g))
        scores = torch.randint(0, 25, (n,), generator=g).double() / 8  # many ties
        labels = (torch.rand(n, generator=g) < torch.sigmoid(2 * scores - 3)).long()
        scores, labels = scores.to(device), labels.to(device)
        threshold, value = best_threshold(scores, labels, metric)
        assert abs(value - brute_force(scores.cpu(), labels.cpu(), metric)) < 1e-12
        # the returned threshold realises the value (predictions are scores > threshold)
        assert abs(metric_of(*confusion_at(scores, labels, threshold), metric) - value) < 1e-12


def test_threshold_lies_between_distinct_scores():
    scores = torch.tensor([0.1, 0.2, 0.2, 0.7, 0.9])
    labels = torch.tensor([0, 0, 0, 1, 1])
    t, acc = best_threshold(scores, labels, "acc")
    assert acc == 1.0 and 0.2 < t < 0.7
    # adjacent float32 values still get a separating threshold in their own precision
    lo = torch.tensor(1.0)
    hi = torch.nextafter(lo, torch.tensor(2.0))
    t, acc = best_threshold(torch.stack([lo, hi]), torch.tensor([0, 1]), "acc")
    assert acc == 1.0
    pred = torch.stack([lo, hi]) > t
    assert pred.tolist() == [False, True]


def test_extreme_cuts_and_degenerate_labels():
    scores = torch.tensor([0.3, 0.5, 0.8])
    # everything positive: the best cut predicts all positive (threshold below the minimum)
    t, acc = best_threshold(scores, torch.ones(3, dtype=torch.long), "acc")
    assert acc == 1.0 and t < 0.3 and bool((scores > t).all())
    t, f1 = best_threshold(scores, torch.ones(3, dtype=torch.long), "f1")
    assert f1 == 1.0 and bool((scores > t).all())
    # nothing positive: accuracy 1 by predicting nothing; F1 is 0 everywhere
    t, acc = best_threshold(scores, torch.zeros(3, dtype=torch.long), "acc")
    assert acc == 1.0 and not bool((scores > t).any())
    assert best_threshold(scores, torch.zeros(3, dtype=torch.long), "f1").value == 0.0
    # all scores equal: only "all positive" and "all negative" exist
    t, acc = best_threshold(torch.full((4,), 0.5), torch.tensor([1, 1, 1, 0]), "acc")
    assert acc == 0.75 and t < 0.5
    # bool labels work like 0/1
    assert best_threshold(scores, torch.tensor([False, True, True]), "f1").value == 1.0


def test_bad_input():
    s = torch.tensor([0.1, 0.2])
    with pytest.raises(ValueError, match="metric"):
        best_threshold(s, torch.tensor([0, 1]), "auc")
    with pytest.raises(ValueError, match="binary"):
        best_threshold(s, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"scores \[n\] and labels \[n\]"):
        best_threshold(s, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="at least one"):
        best_threshold(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="NaN"):
        best_threshold(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="floating point"):
        best_threshold(torch.tensor([1, 2]), torch.tensor([0, 1]))
