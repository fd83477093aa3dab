"""The uniform distribution on the unit sphere S^{d−1} ⊂ R^d: the prior of the vMF-VAE."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch.distributions import Distribution, constraints
from kexue import _random

Tensor = torch.Tensor


def log_sphere_area(d: int) -> float:
    """log |S^{d−1}| = log(2 π^{d/2} / Γ(d/2)), the surface area of the unit sphere in R^d."""
    return math.log(2.0) + (d / 2) * math.log(math.pi) - math.lgamma(d / 2)


class _UnitSphere(constraints.Constraint):
    """Vectors (last dimension) of Euclidean norm 1, up to √eps of the dtype (normalising a vector
    in float32 leaves its norm ~1e-7 from 1; float64 callers get a correspondingly tight check)."""

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        tol = torch.finfo(value.dtype).eps ** 0.5 if value.dtype.is_floating_point else 0.0
        return (torch.linalg.vector_norm(value, dim=-1) - 1).abs() <= tol

    def __repr__(self) -> str:
        return "UnitSphere()"


unit_sphere = _UnitSphere()


def _check_dim(dim, who: str) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ValueError(f"{who}: dim (the ambient dimension d of S^(d-1)) must be an integer >= 2, got {dim!r}")
    return dim


class HypersphericalUniform(Distribution):
    """Uniform on S^{dim−1}: density 1/|S^{dim−1}| with respect to the surface measure.

    Samples are normalised standard normals (rotation invariance of N(0, I)).
    """

    arg_constraints = {}
    support = unit_sphere
    has_rsample = False

    def __init__(self, dim: int, batch_shape=torch.Size(), *, device=None, dtype: torch.dtype = torch.float32,
                 validate_args: Optional[bool] = None):
        self.dim = _check_dim(dim, "HypersphericalUniform")
        if not dtype.is_floating_point:
            raise TypeError(f"HypersphericalUniform: dtype must be floating, got {dtype}")
        self._device, self._dtype = torch.device(device) if device is not None else torch.device("cpu"), dtype
        super().__init__(torch.Size(batch_shape), torch.Size([dim]), validate_args=validate_args)

    def sample(self, sample_shape=torch.Size(), generator: Optional[torch.Generator] = None) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        x = _random.randn(shape, generator=generator, device=self._device, dtype=self._dtype)
        return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return torch.full(value.shape[:-1], -log_sphere_area(self.dim), device=value.device, dtype=value.dtype)

    def entropy(self) -> Tensor:
        return torch.full(self.batch_shape, log_sphere_area(self.dim), device=self._device, dtype=self._dtype)

    @property
    def mean(self) -> Tensor:
        return torch.zeros(self._extended_shape(), device=self._device, dtype=self._dtype)


__all__ = ["HypersphericalUniform", "log_sphere_area", "unit_sphere"]
