"""The contract every invertible layer follows, and small helpers shared by the flow layers."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

Tensor = torch.Tensor
Shape = Tuple[int, ...]


class FlowLayer(nn.Module):
    """An invertible map with a per-sample log-determinant.

    ``forward(x, context)`` returns ``(y, logdet)`` and ``inverse(y, context)`` returns
    ``(x, logdet_of_inverse)``; ``logdet`` has shape ``[B]`` and the two log-dets of a round
    trip sum to zero. ``context`` is an optional conditioning tensor that layers without a
    conditioner ignore. ``output_shape`` maps a per-sample event shape through the layer.
    """

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x`` [B, *event] (and an optional ``context``) → ``(y, logdet)``: ``y`` [B, *output_shape]
        and ``logdet`` [B] = log|det ∂y/∂x| per sample (fp32 for half inputs, fp64 for fp64).
        Subclasses must implement it."""
        raise NotImplementedError

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``y`` [B, *output_shape] → ``(x, logdet)`` with ``x`` [B, *event] and ``logdet`` [B] =
        log|det ∂x/∂y|, the negative of the forward log-det at ``x``. Subclasses must implement it."""
        raise NotImplementedError

    def output_shape(self, shape: Shape) -> Shape:
        return tuple(shape)


def zeros_logdet(x: Tensor) -> Tensor:
    """A zero log-det in the dtype the kexue ops use for ``x`` (fp32 for half inputs)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_zeros(x.shape[0], dtype=dtype)


def check_event(x: Tensor, shape: Sequence[int], layer: str) -> None:
    """Fail early, naming the layer, when a batch does not have the expected event shape."""
    if tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{layer}: expected inputs of shape [B, {', '.join(map(str, shape))}], got {list(x.shape)}")
