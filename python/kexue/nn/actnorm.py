"""ActNorm (Glow): a per-channel affine map initialised from the first batch."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from kexue.nn.base import FlowLayer, Tensor
from kexue.ops import actnorm


class ActNorm(FlowLayer):
    """``y = (x + b)·exp(log_s)`` per channel (dim 1), with ``log-det = H·W·Σ log_s``.

    On the first training-mode forward, ``b`` and ``log_s`` are set so that the batch has zero
    mean and unit variance per channel (statistics averaged over all ranks under
    torch.distributed, so replicas stay identical). The ``initialized`` flag is a saved buffer:
    a model loaded from a checkpoint is never re-initialised.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps
        # A Python mirror of the buffer: torch.compile can branch on it without a graph break.
        self._ready = False
        self.register_load_state_dict_post_hook(_sync_ready)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        stats = torch.stack([xf.mean(dims), xf.square().mean(dims)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
            stats /= dist.get_world_size()
        mean, var = stats[0], (stats[1] - stats[0].square()).clamp_min(0)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-0.5 * torch.log(var + self.eps))
        self.initialized.fill_(True)
        self._ready = True

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x`` [B, C, ...] → ``(y, logdet)`` with ``y = (x + b)·exp(log_s)`` per channel and ``logdet``
        [B] = (spatial size)·Σ log_s (fp32 for half inputs). The first call in training mode first
        initialises b and log_s from this batch (data-dependent init)."""
        if not self._ready and self.training:
            self.initialize(x)
        return actnorm(x, self.bias, self.log_scale)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``y`` [B, C, ...] → ``(x, logdet)`` with ``x = y·exp(−log_s) − b`` (exact) and ``logdet`` [B]
        = −(spatial size)·Σ log_s. Never runs the data-dependent initialisation."""
        return actnorm(y, self.bias, self.log_scale, reverse=True)


def _sync_ready(module: ActNorm, incompatible_keys) -> None:
    module._ready = bool(module.initialized)


class Scaling(FlowLayer):
    """NICE's final diagonal scaling ``y = x·exp(log_s)`` over features (dim 1), through the
    actnorm kernel with a zero bias (one copy of the arithmetic)."""

    def __init__(self, features: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("zero_bias", torch.zeros(features), persistent=False)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x`` [B, D] (or [B, D, ...]) → ``(y, logdet)`` with ``y = x·exp(log_s)`` per feature and
        ``logdet`` [B] = (size of the trailing dims)·Σ log_s."""
        return actnorm(x, self.zero_bias, self.log_scale)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``y`` [B, D] (or [B, D, ...]) → ``(x, logdet)`` with ``x = y·exp(−log_s)`` (exact) and
        ``logdet`` [B] the negated forward log-det."""
        return actnorm(y, self.zero_bias, self.log_scale, reverse=True)
