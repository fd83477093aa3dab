"""Multi-scale factor-out (RealNVP/Glow) with a learned conditional prior."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from kexue.nn.base import FlowLayer, Shape, Tensor
from kexue.nn.conditioners import conditioner
from kexue.ops import coupling


class Split(FlowLayer):
    """Factors out the second half of the channels, ``z_out``, given the first, ``h``.

    The learned prior ``z_out | h ~ N(μ(h), σ(h)²)`` (zero-initialised network: N(0, 1) at
    start) is folded into the flow as the affine map ``ε = (z_out − μ)/σ``, so the factored-out
    ``ε`` is standard normal under the model and ``log-det = −Σ log σ`` — the same arithmetic as
    a reverse coupling, and computed by that kernel. ``forward`` returns ``(h, ε, logdet)``;
    ``inverse(h, ε)`` rebuilds the input. Sampling at temperature T scales ε, i.e. σ·T.
    """

    factors_out = True

    def __init__(self, shape: Shape, hidden: int = 64, context_features: int = 0):
        super().__init__()
        channels = shape[0]
        if channels % 2:
            raise ValueError(f"Split: needs an even number of channels/features, got {channels}")
        half = channels // 2
        self.net = conditioner(tuple(shape), half, 2 * half, hidden, context_features)

    def output_shape(self, shape: Shape) -> Shape:
        return (shape[0] // 2,) + tuple(shape[1:])

    def factored_shape(self, shape: Shape) -> Shape:
        return (shape[0] - shape[0] // 2,) + tuple(shape[1:])

    def _prior(self, h: Tensor, context: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        mean, log_std = self.net(h, context).chunk(2, dim=1)
        return log_std.contiguous(), mean.contiguous()

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """``x`` [B, C, ...] (C even) → ``(h, eps, logdet)``: ``h`` [B, C/2, ...] the kept half, ``eps``
        [B, C/2, ...] the factored-out half standardised by the learned prior, ``(z_out − μ(h))/σ(h)``,
        and ``logdet`` [B] = −Σ log σ(h). Note the three outputs (``Flow`` checks ``factors_out``)."""
        if x.shape[1] % 2:
            raise ValueError(f"Split: needs an even number of channels/features, got {x.shape[1]}")
        h, z_out = x.chunk(2, dim=1)
        log_std, mean = self._prior(h, context)
        eps, logdet = coupling(z_out.contiguous(), log_std, mean, scale="exp", reverse=True)
        return h, eps, logdet

    def inverse(self, h: Tensor, eps: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``h`` [B, C/2, ...] and ``eps`` [B, C/2, ...] → ``(x, logdet)``: ``x`` [B, C, ...] =
        ``[h, μ(h) + σ(h)·eps]`` (exact) and ``logdet`` [B] = +Σ log σ(h). Takes ``eps`` as a second
        argument, unlike other FlowLayers."""
        log_std, mean = self._prior(h, context)
        z_out, logdet = coupling(eps.contiguous(), log_std, mean, scale="exp")
        return torch.cat([h, z_out], dim=1), logdet
