"""Automatic threshold search (MODELS.md H2): the cut on a similarity score that maximises
accuracy or F1 on a labelled dev set, found by sorting once and sweeping every cut in O(n log n).

Predictions are ``score > threshold`` → positive. Only cuts between two distinct scores change
the predictions, so the candidates are: below every score (all positive), the midpoint of each
pair of adjacent distinct scores, and the largest score (all negative).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

Tensor = torch.Tensor

METRICS = ("acc", "f1")


class ThresholdResult(NamedTuple):
    threshold: float
    value: float


def _check(scores: Tensor, labels: Tensor, metric: str) -> None:
    if not isinstance(scores, Tensor) or not isinstance(labels, Tensor):
        raise TypeError("best_threshold: scores and labels must be tensors")
    if scores.dim() != 1 or labels.shape != scores.shape:
        raise ValueError(f"best_threshold: expects scores [n] and labels [n], got {list(scores.shape)} and {list(labels.shape)}")
    if scores.numel() == 0:
        raise ValueError("best_threshold: needs at least one scored example")
    if not scores.is_floating_point():
        raise TypeError(f"best_threshold: scores must be floating point, got {scores.dtype}")
    if metric not in METRICS:
        raise ValueError(f"best_threshold: metric must be one of {METRICS}, got {metric!r}")
    if not torch.isfinite(scores).all():
        raise ValueError("best_threshold: scores contain NaN or inf")
    if labels.dtype != torch.bool and not ((labels == 0) | (labels == 1)).all():
        raise ValueError("best_threshold: labels must be binary (0/1 or bool)")


def _metric(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor, metric: str) -> Tensor:
    if metric == "acc":
        return (tp + tn) / (tp + fp + fn + tn)
    # F1 = 2TP / (2TP + FP + FN); defined as 0 when there is nothing to find and nothing predicted
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(denom))


def confusion_at(scores: Tensor, labels: Tensor, threshold: float) -> tuple:
    """(TP, FP, FN, TN) of the predictions ``scores > threshold``: the brute-force counterpart
    of the sweep, used by the tests."""
    pred = scores > threshold
    pos = labels.bool()
    return (int((pred & pos).sum()), int((pred & ~pos).sum()), int((~pred & pos).sum()), int((~pred & ~pos).sum()))


def best_threshold(scores: Tensor, labels: Tensor, metric: str = "acc") -> ThresholdResult:
    """The threshold maximising ``metric`` ("acc" or "f1") of ``scores > threshold`` against the
    binary ``labels``, and that maximum. Among equally good cuts the lowest threshold wins.

    With the scores sorted ascending, cutting after position i (the first i+1 predicted
    negative) gives FN = cumsum(labels)[i], TP = P − FN, TN = (i+1) − FN, FP = n − (i+1) − TP:
    every cut's metric is a vectorised expression of one cumulative sum.
    """
    _check(scores, labels, metric)
    # the cut is computed in the scores' own dtype, so that ``scores > threshold`` (which casts
    # the Python float to that dtype) reproduces exactly the predictions that were counted
    s, order = torch.sort(scores.detach())
    y = labels[order].double()
    n = s.shape[0]
    # k = number predicted negative, for k = 0 .. n
    k = torch.arange(n + 1, dtype=torch.float64, device=s.device)
    fn = torch.cat([y.new_zeros(1), torch.cumsum(y, 0)])
    tp = y.sum() - fn
    tn = k - fn
    fp = (n - k) - tp
    value = _metric(tp, fp, fn, tn, metric)
    # a cut inside a run of equal scores is not realisable: such k are not candidates
    valid = torch.ones(n + 1, dtype=torch.bool, device=s.device)
    valid[1:n] = s[1:] != s[:-1]
    value = torch.where(valid, value, torch.full_like(value, -1.0))
    best = int(torch.argmax(value))  # first maximum: the lowest threshold among ties
    if best == 0:
        threshold = float(torch.nextafter(s[0], s.new_tensor(float("-inf"))))
    elif best == n:
        threshold = float(s[-1])
    else:
        lo, hi = s[best - 1], s[best]
        mid = lo + (hi - lo) / 2
        # adjacent doubles have no midpoint: lo itself then separates them (lo > lo is false)
        threshold = float(torch.where(mid < hi, mid, lo))
    return ThresholdResult(threshold, float(value[best]))


__all__ = ["METRICS", "ThresholdResult", "best_threshold", "confusion_at"]
