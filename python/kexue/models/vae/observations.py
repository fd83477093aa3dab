"""Decoder likelihoods p(x|z) of the VAEs: what the decoder network's outputs mean.

Each observation model turns the decoder's flat output [B, param_size] into per-image
log-likelihoods ``log_prob(params, x) -> [B]`` (nats), a mean image and a draw. Data arrive as the
data sets hold them: discrete images as integer levels 0..n_levels−1 (the digits: 17 levels,
0..16), continuous data as floats.

- ``categorical``: one softmax over the n_levels values per pixel. An exact probability mass
  function of the discrete data, so −log p(x) is a true code length (nats per image; divided
  by D·log 2, bits per dimension comparable with the flows' discrete bits/dim). The default
  for discrete data, and the decoder of the NLL tables.
- ``bernoulli``: pixels scaled to [0, 1] (level/(n_levels−1)) as Bernoulli "probabilities"
  (the cross-entropy of the posts and most VAE code). For grey levels this is not a likelihood
  of the data — it is not normalised over the 17 levels — so its "NLL" is labelled as the
  Bernoulli cross-entropy and is not comparable with true code lengths.
- ``gaussian``: N(x; m, σ²) on the [0, 1]-scaled pixels (or the raw continuous data) with one
  learned σ (``sigma=None``) or a fixed one. A density, not a mass function, for discrete data.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from kexue import _random

Tensor = torch.Tensor
LOG_2PI = math.log(2 * math.pi)
OBSERVATIONS = ("categorical", "bernoulli", "gaussian")


class Observation(nn.Module):
    """Base: ``dim`` values per example; subclasses define the parameterisation."""

    #: True when log_prob is a probability mass of the discrete levels (a code length)
    discrete_likelihood = False

    def __init__(self, dim: int, n_levels: Optional[int]):
        super().__init__()
        self.dim, self.n_levels = dim, n_levels

    @property
    def param_size(self) -> int:
        return self.dim

    def unit(self, x: Tensor) -> Tensor:
        """The data as floats: discrete levels scaled to [0, 1], continuous data unchanged."""
        x = x.flatten(1).to(torch.get_default_dtype() if not x.dtype.is_floating_point else x.dtype)
        return x / (self.n_levels - 1) if self.n_levels else x

    def from_unit(self, m: Tensor) -> Tensor:
        """Inverse of ``unit``: back to data units (levels for discrete data, not rounded)."""
        return m * (self.n_levels - 1) if self.n_levels else m

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """E[x|z] in data units, [B, dim]."""
        raise NotImplementedError

    def sample(self, params: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """x ~ p(x|z) in data units, [B, dim]."""
        raise NotImplementedError


class CategoricalPixels(Observation):
    discrete_likelihood = True

    def __init__(self, dim: int, n_levels: Optional[int]):
        if not n_levels or n_levels < 2:
            raise ValueError(f"the categorical decoder needs discrete data (n_levels >= 2), got n_levels={n_levels!r}")
        super().__init__(dim, n_levels)

    @property
    def param_size(self) -> int:
        return self.dim * self.n_levels

    def _log_probs(self, params: Tensor) -> Tensor:
        return F.log_softmax(params.view(params.shape[0], self.dim, self.n_levels), dim=-1)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        levels = x.flatten(1).long()
        return self._log_probs(params).gather(-1, levels[..., None])[..., 0].sum(-1)

    def mean(self, params: Tensor) -> Tensor:
        grid = torch.arange(self.n_levels, device=params.device, dtype=params.dtype)
        return (self._log_probs(params).exp() * grid).sum(-1)

    def sample(self, params: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        probs = self._log_probs(params).exp().flatten(0, 1)
        return torch.multinomial(probs, 1, generator=generator).view(params.shape[0], self.dim).to(params.dtype)


class BernoulliPixels(Observation):
    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        target = self.unit(x).to(params.dtype)
        return -F.binary_cross_entropy_with_logits(params, target, reduction="none").sum(-1)

    def mean(self, params: Tensor) -> Tensor:
        return self.from_unit(torch.sigmoid(params))

    def sample(self, params: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return self.from_unit(torch.bernoulli(torch.sigmoid(params), generator=generator))


class GaussianPixels(Observation):
    """``sigma=None``: one learned σ (log σ starts at log 0.1, a tenth of the [0, 1] pixel range);
    a number: that σ, fixed."""

    def __init__(self, dim: int, n_levels: Optional[int], sigma: Optional[float] = None):
        super().__init__(dim, n_levels)
        if sigma is None:
            self.log_sigma = nn.Parameter(torch.tensor(math.log(0.1)))
        else:
            if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
                raise ValueError(f"the Gaussian decoder's sigma must be a positive number or None (learned), got {sigma!r}")
            self.register_buffer("log_sigma", torch.tensor(math.log(sigma)))

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        target = self.unit(x).to(params.dtype)
        ls = self.log_sigma.to(params.dtype)
        return -0.5 * ((target - params).square() * torch.exp(-2 * ls)).sum(-1) - self.dim * (ls + 0.5 * LOG_2PI)

    def mean(self, params: Tensor) -> Tensor:
        return self.from_unit(params)

    def sample(self, params: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        noise = _random.randn(params.shape, generator=generator, device=params.device, dtype=params.dtype)
        return self.from_unit(params + torch.exp(self.log_sigma).to(params.dtype) * noise)


def make_observation(kind: Optional[str], dim: int, n_levels: Optional[int], sigma: Optional[float] = None) -> Observation:
    """The decoder likelihood called ``kind`` (None: categorical for discrete data, Gaussian
    otherwise) for examples of ``dim`` values."""
    if kind is None:
        kind = "categorical" if n_levels else "gaussian"
    if kind not in OBSERVATIONS:
        raise ValueError(f"decoder must be one of {', '.join(OBSERVATIONS)} (or None), got {kind!r}")
    if sigma is not None and kind != "gaussian":
        raise ValueError(f"sigma is the Gaussian decoder's noise level; it means nothing for decoder={kind!r}")
    if kind == "categorical":
        return CategoricalPixels(dim, n_levels)
    if kind == "bernoulli":
        return BernoulliPixels(dim, n_levels)
    return GaussianPixels(dim, n_levels, sigma)


__all__ = ["BernoulliPixels", "CategoricalPixels", "GaussianPixels", "OBSERVATIONS", "Observation", "make_observation"]
