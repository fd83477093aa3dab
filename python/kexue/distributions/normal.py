"""A Gaussian with diagonal covariance, parameterised by mean and log-variance as VAE encoders
output them (post 变分自编码器（一）：原来是这么一回事), with seeded reparameterised sampling and the
closed-form KL divergence from N(0, I)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch.distributions import Distribution, constraints
from kexue import _random

Tensor = torch.Tensor
LOG_2PI = math.log(2 * math.pi)


class DiagonalNormal(Distribution):
    """N(loc, diag(exp(log_var))) over the last dimension: ``loc`` and ``log_var`` [..., L]
    (broadcastable), event shape [L]."""

    arg_constraints = {"loc": constraints.real_vector, "log_var": constraints.real_vector}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: Tensor, log_var: Tensor, validate_args: Optional[bool] = None):
        for name, t in (("loc", loc), ("log_var", log_var)):
            if not isinstance(t, Tensor) or not t.dtype.is_floating_point:
                raise TypeError(f"DiagonalNormal: {name} must be a floating tensor [..., L], got "
                                f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
            if t.dim() < 1:
                raise ValueError(f"DiagonalNormal: {name} must have at least one dimension [..., L], got a scalar")
        try:
            shape = torch.broadcast_shapes(loc.shape, log_var.shape)
        except RuntimeError:
            raise ValueError(f"DiagonalNormal: loc {list(loc.shape)} and log_var {list(log_var.shape)} "
                             "do not broadcast") from None
        self.loc, self.log_var = loc.expand(shape), log_var.expand(shape)
        super().__init__(shape[:-1], shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return DiagonalNormal(self.loc.expand(shape), self.log_var.expand(shape), validate_args=False)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return torch.exp(self.log_var)

    @property
    def stddev(self) -> Tensor:
        return torch.exp(0.5 * self.log_var)

    def rsample(self, sample_shape=torch.Size(), generator: Optional[torch.Generator] = None) -> Tensor:
        """loc + σ ⊙ ε, ε ~ N(0, I): the reparameterisation trick, [*sample_shape, *batch, L]."""
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = _random.randn(shape, generator=generator, device=self.loc.device, dtype=self.loc.dtype)
        return self.loc + self.stddev * eps

    def sample(self, sample_shape=torch.Size(), generator: Optional[torch.Generator] = None) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return -0.5 * ((value - self.loc).square() * torch.exp(-self.log_var) + self.log_var + LOG_2PI).sum(-1)

    def entropy(self) -> Tensor:
        return 0.5 * (self.log_var + 1 + LOG_2PI).sum(-1)

    def kl_to_standard_normal(self) -> Tensor:
        """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ_i (μ_i² + σ_i² − log σ_i² − 1), [batch_shape]."""
        return 0.5 * (self.loc.square() + torch.exp(self.log_var) - self.log_var - 1).sum(-1)


__all__ = ["DiagonalNormal"]
