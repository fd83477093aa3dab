"""``Flow``: a stack of invertible layers over a base distribution, with multi-scale factor-out.

``z, logdet = flow(x)`` maps a batch to the flat latent ``z`` ([B, D]: every factored-out part,
then the rest, flattened and concatenated); ``flow.inverse(z)`` maps back; ``log_prob``,
``bits_per_dim`` and ``sample(n, temperature=T)`` follow from the base distribution.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from kexue import _random
from kexue.nn.base import FlowLayer, Shape, Tensor, check_event, zeros_logdet

LOG_2PI = math.log(2 * math.pi)


class StandardNormal(nn.Module):
    """N(0, I) over flat latents."""

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z; 0, I) per row of ``z`` [B, D] → [B]."""
        return -0.5 * (z.square().sum(1) + z.shape[1] * LOG_2PI)

    def sample(self, n: int, dim: int, temperature: float, generator, device, dtype) -> Tensor:
        """``n`` draws [n, ``dim``] of N(0, temperature²·I)."""
        return temperature * _random.randn(n, dim, generator=generator, device=device, dtype=dtype)


class StandardLogistic(nn.Module):
    """The logistic base distribution of the NICE paper: log p(z) = −Σ log(1 + e^z) + log(1 + e^−z)."""

    def log_prob(self, z: Tensor) -> Tensor:
        """Σ log logistic(z) per row of ``z`` [B, D] → [B]."""
        return -(torch.nn.functional.softplus(z) + torch.nn.functional.softplus(-z)).sum(1)

    def sample(self, n: int, dim: int, temperature: float, generator, device, dtype) -> Tensor:
        """``n`` draws [n, ``dim``] of the logistic, scaled by ``temperature``."""
        u = _random.rand(n, dim, generator=generator, device=device, dtype=dtype).clamp(1e-6, 1 - 1e-6)
        return temperature * (torch.log(u) - torch.log1p(-u))


PRIORS = {"normal": StandardNormal, "logistic": StandardLogistic}


class Flow(nn.Module):
    """``layers`` (FlowLayers, applied in order) over a base distribution ``prior`` ("normal":
    N(0, I); "logistic": NICE's) on the flat latent, for data of per-sample shape ``event_shape``.
    Layers with ``factors_out`` (``Split``) send part of the state straight to the latent."""

    def __init__(self, layers: Sequence[FlowLayer], event_shape: Sequence[int], prior: str = "normal"):
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(f"Flow: prior must be one of {sorted(PRIORS)}, got {prior!r}")
        self.layers = nn.ModuleList(layers)
        self.event_shape = tuple(event_shape)
        self.prior = PRIORS[prior]()
        # Walk the shapes once: the factored-out parts' shapes say how to cut z on the way back.
        shape, factored = self.event_shape, []
        for layer in self.layers:
            if getattr(layer, "factors_out", False):
                factored.append(layer.factored_shape(shape))
            shape = layer.output_shape(shape)
        self.factored_shapes: List[Shape] = factored
        self.final_shape: Shape = shape
        self.dim = math.prod(self.event_shape)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x`` [B, *event_shape] → ``(z, logdet)``: ``z`` [B, D] the flat latent (the factored-out
        parts in layer order, then the final state, each flattened) and ``logdet`` [B] = log|det ∂z/∂x|,
        the sum of the layers' log-dets (fp32 for half inputs), so ``log p(x) = log p(z) + logdet``."""
        check_event(x, self.event_shape, type(self).__name__)
        h, logdet, parts = x, zeros_logdet(x if x.dtype.is_floating_point else x.float()), []
        for layer in self.layers:
            if getattr(layer, "factors_out", False):
                h, eps, ld = layer(h, context)
                parts.append(eps.flatten(1))
            else:
                h, ld = layer(h, context)
            logdet = logdet + ld
        parts.append(h.flatten(1))
        return torch.cat(parts, dim=1), logdet

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """``z`` [B, D] → ``x`` [B, *event_shape] (the log-det dropped; see ``inverse_with_logdet``).
        Exact up to rounding except through layers with iterative inverses (i-ResNet blocks) or a
        ``Dequantize`` (which floors to the discrete levels)."""
        return self.inverse_with_logdet(z, context)[0]

    def inverse_with_logdet(self, z: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``z`` [B, D] → ``(x, logdet)``: ``x`` [B, *event_shape] and ``logdet`` [B] = log|det ∂x/∂z|
        (the negative of the forward log-det at ``x``), ``z`` cut into the factored-out parts by
        ``factored_shapes``."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"{type(self).__name__}.inverse: expected z of shape [B, {self.dim}], got {list(z.shape)}")
        sizes = [math.prod(s) for s in self.factored_shapes] + [math.prod(self.final_shape)]
        chunks = list(z.split(sizes, dim=1))
        h = chunks.pop().reshape(z.shape[0], *self.final_shape)
        logdet = zeros_logdet(z)
        for layer in reversed(self.layers):
            if getattr(layer, "factors_out", False):
                shape = self.factored_shapes[len(chunks) - 1]
                eps = chunks.pop().reshape(z.shape[0], *shape)
                h, ld = layer.inverse(h, eps, context)
            else:
                h, ld = layer.inverse(h, context)
            logdet = logdet + ld
        return h, logdet

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """``log p(x)`` [B] = log prior(z) + log|det ∂z/∂x| (nats)."""
        z, logdet = self(x, context)
        return self.prior.log_prob(z) + logdet

    def bits_per_dim(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Per-sample −log p(x) / (D·ln 2); with a Dequantize layer first this is the discrete
        bits/dim of the data."""
        return -self.log_prob(x, context) / (self.dim * math.log(2))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, context: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """``n`` samples [n, *event_shape]: ``z`` from the prior scaled by ``temperature``, mapped back
        by ``inverse`` (no gradients)."""
        p = next(self.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        dtype = p.dtype if p is not None else torch.float32
        z = self.prior.sample(n, self.dim, temperature, generator, device, dtype)
        return self.inverse(z, context)
