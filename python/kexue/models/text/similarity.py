"""Evaluating sentence vectors the way the STS literature does: Spearman correlation between
cosine similarities and gold scores."""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def rankdata(x: Tensor) -> Tensor:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    x = x.flatten().double()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    n = x.numel()
    # start index of each run of equal values, and the mean rank over the run
    new_run = torch.ones(n, dtype=torch.bool, device=x.device)
    new_run[1:] = sorted_x[1:] != sorted_x[:-1]
    run_id = torch.cumsum(new_run, 0) - 1
    positions = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    run_sum = torch.zeros(int(run_id[-1]) + 1 if n else 0, dtype=torch.float64, device=x.device).index_add_(0, run_id, positions)
    run_len = torch.zeros_like(run_sum).index_add_(0, run_id, torch.ones_like(positions))
    ranks = torch.empty(n, dtype=torch.float64, device=x.device)
    ranks[order] = (run_sum / run_len)[run_id]
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    if a.numel() != b.numel() or a.numel() < 2:
        raise ValueError(f"spearman: needs two sequences of the same length >= 2, got {a.numel()} and {b.numel()}")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / torch.sqrt((ra * ra).sum() * (rb * rb).sum()))


def cosine_spearman(u: Tensor, v: Tensor, gold: Tensor) -> float:
    """Spearman ρ between cos(u_i, v_i) and the gold similarity scores."""
    if u.shape != v.shape or u.dim() != 2 or u.shape[0] != gold.numel():
        raise ValueError(f"cosine_spearman: expects u, v of shape [N, D] and N gold scores, got {list(u.shape)}, {list(v.shape)}, {gold.numel()}")
    cos = torch.nn.functional.cosine_similarity(u.double(), v.double(), dim=1)
    return spearman(cos, gold)
