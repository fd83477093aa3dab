"""The determinant of a non-square matrix (post 再谈非方阵的行列式): for B ∈ R^{n×k}, n ≥ k, the
k-dimensional volume of the parallelotope spanned by its columns,

    vol(B) = √det(BᵀB) = Π_i σ_i(B),

the product of its singular values. For square B it is |det B|. An injective map
f: R^k → R^n with Jacobian J changes densities on its image by 1/vol(J), so ``log_volume`` is the
log-det term of injective flows."""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def _check(b: Tensor, name: str) -> Tensor:
    if not isinstance(b, Tensor):
        raise TypeError(f"{name}: B must be a tensor, got {type(b).__name__}")
    if b.dim() < 2:
        raise ValueError(f"{name}: expects B of shape [..., n, k], got {list(b.shape)}")
    if not b.is_floating_point():
        raise TypeError(f"{name}: B must be real floating point, got {b.dtype}")
    n, k = b.shape[-2:]
    if n < k:
        raise ValueError(f"{name}: B [..., n, k] needs n >= k (k columns spanning a k-volume in R^n), "
                         f"got n={n} < k={k}; pass the transpose to measure its rows")
    # singular values are computed in float32 at least (no half/bfloat16 SVD kernels)
    return b.float() if b.dtype in (torch.float16, torch.bfloat16) else b


def log_volume(b: Tensor) -> Tensor:
    """log √det(BᵀB) = Σ_i log σ_i(B), batched over the leading dimensions; −inf when the columns
    are linearly dependent. Summing logs of singular values never forms BᵀB (which would square
    the condition number) and never overflows as the product can. Its gradient is (B⁺)ᵀ."""
    b = _check(b, "log_volume")
    if b.shape[-1] == 0:
        return b.new_zeros(b.shape[:-2])  # the 0-volume of nothing is 1
    return torch.log(torch.linalg.svdvals(b)).sum(-1)


def volume(b: Tensor) -> Tensor:
    """√det(BᵀB) = Π_i σ_i(B) of B [..., n, k], n ≥ k, batched; |det B| when n = k. Differentiable
    (including at rank-deficient B, where the product rule handles the zero singular value)."""
    b = _check(b, "volume")
    return torch.linalg.svdvals(b).prod(-1)


def reference_volume(b: Tensor) -> Tensor:
    """√det(BᵀB) by the definition, as the tests' oracle (loses accuracy for ill-conditioned B)."""
    b = _check(b, "reference_volume")
    return torch.sqrt(torch.linalg.det(b.transpose(-1, -2) @ b).clamp_min(0))


__all__ = ["log_volume", "reference_volume", "volume"]
