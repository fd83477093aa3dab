"""Data preprocessing as flow layers, so their log-dets enter the likelihood (and bits/dim)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from kexue.nn.base import FlowLayer, Tensor, zeros_logdet


class Dequantize(FlowLayer):
    """Discrete pixels in {0, …, L−1} → ``(x + u)/L`` in [0, 1), u ~ U[0, 1)^D.

    With log-det ``−D·log L``, ``log p(x) = log p_cont((x+u)/L) − D log L`` is the usual
    variational lower bound on the discrete log-likelihood, so bits/dim counts it. Inverse:
    ``floor(y·L)`` clamped to the valid levels. In eval mode the noise is fixed at u = 1/2
    unless ``noise_in_eval`` is set, which keeps test-set numbers deterministic.
    """

    def __init__(self, levels: int, noise_in_eval: bool = False):
        super().__init__()
        if levels < 2:
            raise ValueError(f"Dequantize: levels must be >= 2, got {levels}")
        self.levels = levels
        self.noise_in_eval = noise_in_eval

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Levels ``x`` [B, ...] (any dtype, values in {0, …, L−1}) → ``(y, logdet)`` with
        ``y = (x + u)/L`` float in [0, 1) (u uniform in training or with ``noise_in_eval``, else 1/2)
        and ``logdet`` [B] = −D·log L."""
        if x.dtype.is_floating_point:
            xf = x
        else:
            xf = x.float()
        if self.training or self.noise_in_eval:
            u = torch.rand_like(xf)
        else:
            u = torch.full_like(xf, 0.5)
        y = (xf + u) / self.levels
        ld = zeros_logdet(y) - math.log(self.levels) * math.prod(y.shape[1:])
        return y, ld

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``y`` [B, ...] → ``(x, logdet)`` with ``x = floor(y·L)`` clamped to {0, …, L−1} (float dtype)
        and ``logdet`` [B] = +D·log L. A left inverse: it recovers the discrete input exactly, not
        the noise."""
        x = torch.floor(y * self.levels).clamp(0, self.levels - 1)
        return x, zeros_logdet(y) + math.log(self.levels) * math.prod(y.shape[1:])


class Logit(FlowLayer):
    """``y = logit(α + (1 − 2α)·x)`` for x in [0, 1] (RealNVP), keeping y finite at the edges;
    log-det ``Σ log(1 − 2α) − log p − log(1 − p)`` with ``p = α + (1 − 2α)x``."""

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"Logit: alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def _acc(self, t: Tensor) -> Tensor:
        return t.flatten(1).sum(1).to(zeros_logdet(t).dtype)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x`` [B, ...] in [0, 1] → ``(y, logdet)`` with ``y = logit(p)``, ``p = α + (1 − 2α)x``, and
        ``logdet`` [B] = Σ [log(1 − 2α) − log p − log(1 − p)]."""
        p = self.alpha + (1 - 2 * self.alpha) * x
        y = torch.log(p) - torch.log1p(-p)
        ld = math.log(1 - 2 * self.alpha) * math.prod(x.shape[1:]) - self._acc(torch.log(p) + torch.log1p(-p))
        return y, ld

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``y`` [B, ...] → ``(x, logdet)`` with ``x = (sigmoid(y) − α)/(1 − 2α)`` (exact) and ``logdet``
        [B] the negated forward log-det."""
        p = torch.sigmoid(y)
        x = (p - self.alpha) / (1 - 2 * self.alpha)
        ld = -(math.log(1 - 2 * self.alpha) * math.prod(y.shape[1:])) + self._acc(torch.log(p) + torch.log1p(-p))
        return x, ld
