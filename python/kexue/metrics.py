"""Two-sample distances between generated samples and held-out data (used to score samplers).

Both take point sets [N, D] and [M, D] (any N, M) and return a float tensor."""
from __future__ import annotations

from typing import Optional

import torch

Tensor = torch.Tensor


def _check(x: Tensor, y: Tensor, what: str) -> None:
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"{what}: x and y must be [N, D] and [M, D] with the same D, got {list(x.shape)} and {list(y.shape)}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"{what}: each set needs at least 2 points")


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: Optional[float] = None) -> Tensor:
    """Unbiased squared maximum mean discrepancy (Gretton et al. 2012) with the Gaussian kernel
    exp(−‖a−b‖²/(2h²)); h defaults to the median distance over the pooled points (computed on at
    most 2000 of them). Can be slightly negative when the two sets come from one distribution."""
    _check(x, y, "mmd_rbf")
    x, y = x.double(), y.double()
    if bandwidth is None:
        pool = torch.cat([x[:1000], y[:1000]])
        d = torch.cdist(pool, pool)
        bandwidth = d[d > 0].median().item()
    if bandwidth <= 0:
        raise ValueError(f"mmd_rbf: bandwidth must be positive, got {bandwidth}")
    k = lambda a, b: torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth**2))
    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return sxx + syy - 2 * k(x, y).mean()


def sliced_wasserstein(x: Tensor, y: Tensor, projections: int = 256, p: int = 2,
                       generator: Optional[torch.Generator] = None) -> Tensor:
    """Sliced p-Wasserstein distance: (E_θ W_p^p(θ·x, θ·y))^{1/p} over random unit directions θ,
    each 1-D distance from sorted projections (the sets are matched by quantiles when N ≠ M)."""
    _check(x, y, "sliced_wasserstein")
    if projections < 1 or p < 1:
        raise ValueError(f"sliced_wasserstein: projections and p must be >= 1, got {projections}, {p}")
    x, y = x.double(), y.double()
    theta = torch.randn(x.shape[1], projections, dtype=torch.float64, generator=generator).to(x.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = (x @ theta).sort(0).values, (y @ theta).sort(0).values
    q = torch.linspace(0, 1, max(len(x), len(y)), dtype=torch.float64, device=x.device)
    qx = torch.quantile(px, q, dim=0) if len(x) != len(q) else px
    qy = torch.quantile(py, q, dim=0) if len(y) != len(q) else py
    return (qx - qy).abs().pow(p).mean().pow(1.0 / p)
