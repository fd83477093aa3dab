"""Two-sample distances between generated samples and data (used to score samplers and GANs).

Each takes sample sets [N, ...] and [M, ...] (any N, M) and returns a float tensor:
``mmd_rbf`` (unbiased, one median-heuristic bandwidth) and ``sliced_wasserstein`` score
samplers against held-out data; ``mmd2`` (biased, a fixed set of bandwidths, defined for any
batch size) is what the GANs report during training."""
from __future__ import annotations

from typing import Optional, Sequence

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


# Bandwidths h of the kernels exp(−‖x − y‖²/(D·h)), on the squared distance per dimension. The 2-D
# toys have modes of std ~0.1 about 1.5 apart and the images live in [-1, 1]^D, so 0.02 resolves
# points within a mode and 2 sees the global layout; the sum of kernels is characteristic either way.
MMD_BANDWIDTHS = (0.02, 0.1, 0.5, 2.0)


def mmd2(x: Tensor, y: Tensor, bandwidths: Sequence[float] = MMD_BANDWIDTHS) -> Tensor:
    """Squared MMD between the samples ``x`` [N, ...] and ``y`` [M, ...] with the sum of Gaussian
    kernels of ``bandwidths``: the biased (V-statistic) estimate
    ``mean k(x, x') + mean k(y, y') − 2 mean k(x, y)``, which is ≥ 0 and defined for any N, M ≥ 1."""
    if x.dim() < 2 or y.dim() < 2 or x.shape[1:] != y.shape[1:]:
        raise ValueError(f"mmd2: x and y must be batches of equally shaped examples, got {list(x.shape)} "
                         f"and {list(y.shape)}")
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("mmd2: x and y must each hold at least one example")
    if not bandwidths or any(not h > 0 for h in bandwidths):
        raise ValueError(f"mmd2: bandwidths must be positive, got {list(bandwidths)}")
    x, y = x.flatten(1).float(), y.flatten(1).float()
    d = x.shape[1]

    def kernel_mean(a: Tensor, b: Tensor) -> Tensor:
        sq = torch.cdist(a, b).square() / d
        return sum(torch.exp(-sq / h) for h in bandwidths).mean()

    return kernel_mean(x, x) + kernel_mean(y, y) - 2 * kernel_mean(x, y)
