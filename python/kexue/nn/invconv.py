"""Glow's invertible 1×1 convolution in LU form (also a learned linear map for vectors)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from kexue.nn.base import FlowLayer, Tensor


class InvConv1x1(FlowLayer):
    """``y = W x`` over channels (dim 1) with ``W = P·L·(U + diag(sign·exp(log_s)))``.

    P is a fixed permutation, L unit lower-triangular, U strictly upper-triangular: the log-det
    is ``H·W·Σ log_s`` with no slogdet at run time. ``W⁻¹`` (for sampling) is computed in
    float64 and cached until a parameter changes (tracked through the parameters' version
    counters, which optimizer steps and ``load_state_dict`` bump).
    """

    def __init__(self, channels: int, generator: Optional[torch.Generator] = None):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign", torch.sign(diag).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_scale = nn.Parameter(torch.log(diag.abs()).float())
        self._inverse_cache = None

    def weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        eye = torch.eye(self.lower.shape[0], dtype=dtype, device=self.lower.device)
        lower = self.lower.to(dtype) * self.lower_mask.to(dtype) + eye
        upper = self.upper.to(dtype) * self.lower_mask.t().to(dtype) + torch.diag(self.sign.to(dtype) * self.log_scale.to(dtype).exp())
        return self.perm.to(dtype) @ lower @ upper

    def _inverse_weight(self) -> Tensor:
        key = (self.lower._version, self.upper._version, self.log_scale._version, self.lower.device)
        if self._inverse_cache is None or self._inverse_cache[0] != key:
            self._inverse_cache = (key, torch.linalg.inv(self.weight(torch.float64)))
        return self._inverse_cache[1]

    def _apply_weight(self, x: Tensor, w: Tensor) -> Tensor:
        w = w.to(x.dtype)
        if x.dim() == 2:
            return x @ w.t()
        if x.dim() == 4:
            return F.conv2d(x, w[:, :, None, None])
        return torch.einsum("ij,bj...->bi...", w, x)

    def _logdet(self, x: Tensor) -> Tensor:
        ld = self.log_scale.sum() * math.prod(x.shape[2:])
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        return ld.to(acc).expand(x.shape[0])

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x`` [B, C, ...] ([B, C] vectors, [B, C, H, W] images) → ``(y, logdet)`` with ``y = W x``
        over dim 1 and ``logdet`` [B] = (spatial size)·Σ log_s (fp32, or fp64 for fp64 inputs)."""
        return self._apply_weight(x, self.weight(torch.float64 if x.dtype == torch.float64 else torch.float32)), self._logdet(x)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``y`` [B, C, ...] → ``(x, logdet)`` with ``x = W⁻¹ y`` and ``logdet`` [B] the negated forward
        log-det. W⁻¹ is inverted in float64: cached (recomputed when a parameter changes) when no
        gradient is needed, recomputed differentiably when one is."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            w_inv = torch.linalg.inv(self.weight(torch.float64))  # differentiable path
        else:
            w_inv = self._inverse_weight()
        return self._apply_weight(y, w_inv), -self._logdet(y)
