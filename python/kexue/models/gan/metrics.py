"""A critic-free measure of how far generated samples are from data: the kernel MMD.

A GAN's own losses say little about sample quality (the critic moves with the generator), so
``evaluate`` reports the squared maximum mean discrepancy between a batch of data and an equal
number of samples (Gretton et al. 2012), in model space.
"""
from __future__ import annotations

from typing import Sequence

import torch

Tensor = torch.Tensor

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


__all__ = ["MMD_BANDWIDTHS", "mmd2"]
