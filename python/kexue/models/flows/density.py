"""What every flow model shares: a ``kexue.nn.Flow`` plus the training-facing methods."""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import nn

from kexue.nn import Flow

Tensor = torch.Tensor


class FlowModel(nn.Module):
    """A density model ``p(x)`` given by ``self.flow``; the loss is bits/dim for discrete data
    and nats per example for continuous data, averaged over the batch."""

    def __init__(self, flow: Flow, n_levels: Optional[int]):
        super().__init__()
        self.flow = flow
        self.n_levels = n_levels
        self.event_shape = flow.event_shape

    def check_data(self, x: Tensor) -> None:
        if x.dtype.is_floating_point and not torch.compiler.is_compiling() and not torch.isfinite(x).all():
            raise ValueError(f"{type(self).__name__}: the batch contains NaN or inf values")

    def log_prob(self, x: Tensor) -> Tensor:
        self.check_data(x)
        return self.flow.log_prob(x)

    def loss(self, x: Tensor) -> Dict[str, Tensor]:
        """Mean negative log-likelihood: bits per dimension ("bpd", also the loss) for discrete
        data (images with ``n_levels``), nats per example ("nll") for everything; continuous
        data (2-D toys, embeddings) trains on nats, since bits/dim of a density is no unit
        anyone reports."""
        nll = -self.log_prob(x)
        if self.n_levels is None:
            return {"loss": nll.mean(), "nll": nll.mean().detach()}
        bpd = nll / (self.flow.dim * math.log(2))
        return {"loss": bpd.mean(), "bpd": bpd.mean().detach(), "nll": nll.mean().detach()}

    def evaluate(self, x: Tensor) -> Dict[str, Tensor]:
        with torch.no_grad():
            return self.loss(x)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:
        return self.flow.sample(n, temperature=temperature, generator=generator)

    def forward(self, x: Tensor):
        return self.flow(x)
