"""BERT-whitening (post 你可能不需要BERT-flow): a linear map that gives sentence vectors zero
mean and identity covariance, optionally keeping only the top-k principal directions."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

Tensor = torch.Tensor


class Whitening(nn.Module):
    """``x̃ = (x − μ)·W[:, :k]`` with ``Σ = U Λ Uᵀ`` (covariance of the fitted vectors, 1/N as in
    the post) and ``W = U Λ^{−1/2}``. ``k=None`` keeps every direction. Fitted statistics are
    buffers, so a fitted transform survives ``state_dict`` round trips."""

    def __init__(self, k: Optional[int] = None, eps: float = 1e-12):
        super().__init__()
        if k is not None and k < 1:
            raise ValueError(f"Whitening: k must be a positive number of dimensions or None, got {k}")
        self.k, self.eps = k, eps
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("kernel", torch.empty(0, 0))

    @torch.no_grad()
    def fit(self, x: Tensor) -> "Whitening":
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(f"Whitening.fit: expects a matrix [N >= 2, D] of vectors, got {list(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("Whitening.fit: the vectors contain NaN or inf")
        if self.k is not None and self.k > x.shape[1]:
            raise ValueError(f"Whitening: k={self.k} exceeds the dimension {x.shape[1]}")
        xd = x.double()
        mean = xd.mean(0)
        cov = (xd - mean).t() @ (xd - mean) / xd.shape[0]
        u, s, _ = torch.linalg.svd(cov)
        kernel = u / torch.sqrt(s.clamp_min(self.eps))
        if self.k is not None:
            kernel = kernel[:, : self.k]
        self.mean = mean.to(x.dtype)
        self.kernel = kernel.to(x.dtype)
        return self

    def transform(self, x: Tensor) -> Tensor:
        if self.kernel.numel() == 0:
            raise RuntimeError("Whitening.transform: call fit() first")
        if x.dim() != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"Whitening.transform: expects [N, {self.mean.shape[0]}], got {list(x.shape)}")
        return (x - self.mean.to(x.dtype)) @ self.kernel.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.transform(x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # fitted buffers have data-dependent shapes: take them from the checkpoint
        for name in ("mean", "kernel"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
