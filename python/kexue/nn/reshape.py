"""Volume-preserving rearrangements: squeeze, reverse, fixed permutation."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from kexue.nn.base import FlowLayer, Shape, Tensor, zeros_logdet


class Squeeze(FlowLayer):
    """Trade space for channels: [C, H, W] → [4C, H/2, W/2] (RealNVP/Glow). Log-det 0."""

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze: height and width must be even, got {h}×{w}")
        return (4 * c, h // 2, w // 2)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x`` [B, C, H, W] (H, W even) → ``(y, logdet)`` with ``y`` [B, 4C, H/2, W/2] (each 2×2
        patch moved into channels) and ``logdet`` [B] = 0."""
        if x.dim() != 4:
            raise ValueError(f"Squeeze: expected [B, C, H, W], got {list(x.shape)}")
        b, c, h, w = x.shape
        self.output_shape((c, h, w))
        y = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return y, zeros_logdet(x)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``y`` [B, 4C, H, W] → ``(x, logdet)`` with ``x`` [B, C, 2H, 2W] (exact) and ``logdet`` [B] = 0."""
        b, c4, h, w = y.shape
        if c4 % 4:
            raise ValueError(f"Squeeze.inverse: channels must be a multiple of 4, got {c4}")
        c = c4 // 4
        x = y.view(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, 2 * h, 2 * w)
        return x, zeros_logdet(y)


class Permute(FlowLayer):
    """A fixed permutation of dim 1 (features or channels). ``Reverse`` is the reversal."""

    def __init__(self, features: int, generator: Optional[torch.Generator] = None):
        super().__init__()
        perm = torch.randperm(features, generator=generator)
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x`` [B, C, ...] → ``(y, logdet)`` with dim 1 permuted by ``perm`` and ``logdet`` [B] = 0."""
        return x.index_select(1, self.perm), zeros_logdet(x)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``y`` [B, C, ...] → ``(x, logdet)`` with dim 1 permuted back (exact) and ``logdet`` [B] = 0."""
        return y.index_select(1, self.inv_perm), zeros_logdet(y)


class Reverse(Permute):
    """The reversal of dim 1 (features or channels): a ``Permute`` that is its own inverse."""

    def __init__(self, features: int):
        super().__init__(features)
        self.perm.copy_(torch.arange(features - 1, -1, -1))
        self.inv_perm.copy_(self.perm)


class Flatten(FlowLayer):
    """[C, H, W] (or any event shape) → [D], for flows built on vectors (NICE)."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def output_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x`` [B, *shape] → ``(y, logdet)`` with ``y`` [B, D] and ``logdet`` [B] = 0."""
        return x.reshape(x.shape[0], -1), zeros_logdet(x)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``y`` [B, D] → ``(x, logdet)`` with ``x`` [B, *shape] and ``logdet`` [B] = 0."""
        return y.reshape(y.shape[0], *self.shape), zeros_logdet(y)
