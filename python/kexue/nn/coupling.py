"""Coupling layers: RealNVP/Glow affine coupling and NICE additive coupling, with channel halves
or binary masks (checkerboard, channel), optionally conditioned on a context vector. The
arithmetic is ``kexue.ops.coupling``; these modules only produce s and t."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from kexue.nn.base import FlowLayer, Shape, Tensor
from kexue.nn.conditioners import conditioner
from kexue.ops import coupling


def checkerboard_mask(shape: Sequence[int], parity: int = 0) -> Tensor:
    """1 where (row + col + parity) is even over the last two dims ([C, H, W]) or over the
    features ([D]): the entries that pass through and condition the rest."""
    if len(shape) == 1:
        return (torch.arange(shape[0]) + parity) % 2 == 0
    h, w = shape[-2:]
    board = (torch.arange(h)[:, None] + torch.arange(w)[None, :] + parity) % 2 == 0
    return board.expand(*shape).clone()


def channel_mask(shape: Sequence[int], parity: int = 0) -> Tensor:
    """1 on the first half of the channels (second half when parity is 1)."""
    c = shape[0]
    first = torch.arange(c) < c // 2
    m = first if parity == 0 else ~first
    return m.view(c, *([1] * (len(shape) - 1))).expand(*shape).clone()


class MaskedCoupling(FlowLayer):
    """RealNVP coupling with a binary mask b: ``y = b⊙x + (1−b)⊙(x·f(s) + t)``, s and t computed
    from ``b⊙x`` (and the context). ``scale`` as in ``kexue.ops.coupling``."""

    def __init__(self, mask: Tensor, hidden: int = 64, scale: str = "exp", clamp: Optional[float] = None,
                 context_features: int = 0, net: Optional[nn.Module] = None):
        super().__init__()
        self.register_buffer("mask", mask.bool())
        shape = tuple(mask.shape)
        channels = shape[0]
        self.scale, self.clamp = scale, clamp
        n_out = channels if scale == "none" else 2 * channels
        self.net = net if net is not None else conditioner(shape, channels, n_out, hidden, context_features)

    def _params(self, x: Tensor, context: Optional[Tensor]) -> Tuple[Optional[Tensor], Tensor]:
        h = self.net(x * self.mask.to(x.dtype), context)
        if self.scale == "none":
            return None, h
        s, t = h.chunk(2, dim=1)
        return s.contiguous(), t.contiguous()

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x`` [B, *mask.shape] → ``(y, logdet)``: masked entries copied, the others
        ``x·f(s) + t`` with ``(s, t)`` from the masked input (and ``context``); ``logdet`` [B] =
        Σ log f(s) over the unmasked entries (0 for ``scale="none"``; fp32 for half inputs)."""
        s, t = self._params(x, context)
        return coupling(x, s, t, scale=self.scale, mask=self.mask, clamp=self.clamp)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``y`` [B, *mask.shape] → ``(x, logdet)``: the unmasked entries ``(y − t)/f(s)``, exact in one
        pass (the masked entries, hence s and t, are unchanged); ``logdet`` [B] = −Σ log f(s)."""
        s, t = self._params(y, context)  # the masked half is unchanged, so s and t are too
        return coupling(y, s, t, scale=self.scale, mask=self.mask, clamp=self.clamp, reverse=True)


class HalfCoupling(FlowLayer):
    """Glow/NICE coupling on channel halves: ``x = [x_a, x_b]``, ``y_b = x_b·f(s) + t`` with
    ``(s, t) = NN(x_a, context)``. ``swap=True`` conditions on the second half instead."""

    def __init__(self, shape: Shape, hidden: int = 64, scale: str = "sigmoid", clamp: Optional[float] = None,
                 context_features: int = 0, swap: bool = False, net: Optional[nn.Module] = None):
        super().__init__()
        channels = shape[0]
        if channels % 2:
            raise ValueError(f"HalfCoupling: needs an even number of channels/features to split, got {channels}")
        half = channels // 2
        self.scale, self.clamp, self.swap = scale, clamp, swap
        n_out = half if scale == "none" else 2 * half
        self.net = net if net is not None else conditioner(tuple(shape), half, n_out, hidden, context_features)

    def _split(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if x.shape[1] % 2:
            raise ValueError(f"HalfCoupling: needs an even number of channels/features to split, got {x.shape[1]}")
        a, b = x.chunk(2, dim=1)
        return (b, a) if self.swap else (a, b)

    def _join(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([b, a] if self.swap else [a, b], dim=1)

    def _params(self, a: Tensor, context: Optional[Tensor]) -> Tuple[Optional[Tensor], Tensor]:
        h = self.net(a, context)
        if self.scale == "none":
            return None, h.contiguous()
        s, t = h.chunk(2, dim=1)
        return s.contiguous(), t.contiguous()

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x`` [B, C, ...] (C even) → ``(y, logdet)``: the conditioning half copied, the other half
        ``x_b·f(s) + t`` with ``(s, t) = NN(x_a, context)``; ``logdet`` [B] = Σ log f(s) (0 for
        ``scale="none"``; fp32 for half inputs)."""
        a, b = self._split(x)
        s, t = self._params(a, context)
        yb, ld = coupling(b.contiguous(), s, t, scale=self.scale, clamp=self.clamp)
        return self._join(a, yb), ld

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``y`` [B, C, ...] → ``(x, logdet)``: ``x_b = (y_b − t)/f(s)`` with s, t from the unchanged
        half, exact in one pass; ``logdet`` [B] = −Σ log f(s)."""
        a, b = self._split(y)
        s, t = self._params(a, context)
        xb, ld = coupling(b.contiguous(), s, t, scale=self.scale, clamp=self.clamp, reverse=True)
        return self._join(a, xb), ld
