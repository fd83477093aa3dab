"""The networks inside coupling layers and split priors. Their last layer starts at zero, so a
fresh flow is the identity map (Glow's initialisation), which keeps deep flows trainable."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from kexue.nn.base import Tensor


def zero_init(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class MLP(nn.Module):
    """in → hidden → … → out for vector data; ``context`` (if any) is concatenated to the input."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 128, layers: int = 2, context_features: int = 0):
        super().__init__()
        mods, width = [], in_features + context_features
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        mods.append(zero_init(nn.Linear(width, out_features)))
        self.net = nn.Sequential(*mods)
        self.context_features = context_features

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """``x`` [B, in_features] (with ``context`` [B, context_features] appended when configured) →
        [B, out_features]."""
        return self.net(_with_context(x, context, self.context_features))


class ConvNet(nn.Module):
    """Glow's coupling network: conv3×3 → ReLU → conv1×1 → ReLU → zero-initialised conv3×3.
    A context vector [B, K] is broadcast over space and appended as K extra channels."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, context_features: int = 0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + context_features, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            zero_init(nn.Conv2d(hidden, out_channels, 3, padding=1)),
        )
        self.context_features = context_features

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """``x`` [B, in_channels, H, W] (with ``context`` [B, K] broadcast as K extra channels when
        configured) → [B, out_channels, H, W]."""
        return self.net(_with_context(x, context, self.context_features))


def _with_context(x: Tensor, context: Optional[Tensor], features: int) -> Tensor:
    if features == 0:
        return x
    if context is None or context.dim() != 2 or context.shape[1] != features:
        got = None if context is None else list(context.shape)
        raise ValueError(f"conditioner expects a context of shape [B, {features}], got {got}")
    if x.dim() > 2:
        context = context.view(*context.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.cat([x, context.to(x.dtype)], dim=1)


def conditioner(event_shape, in_channels: int, out_channels: int, hidden: int, context_features: int = 0) -> nn.Module:
    """An MLP for vectors ([D]) or a ConvNet for images ([C, H, W])."""
    if len(event_shape) == 1:
        return MLP(in_channels, out_channels, hidden, context_features=context_features)
    return ConvNet(in_channels, out_channels, hidden, context_features=context_features)
