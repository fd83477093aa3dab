"""Batch-normalised Gaussian latent parameters against KL collapse: BN-VAE (Zhu et al. 2020) in
the form of the post 变分自编码器（五）：VAE + BN = 更好的VAE.

For q(z|x) = N(μ(x), σ(x)²) and the prior N(0, I), averaging the KL over the data gives

    E_x KL = ½ Σ_i ( E_x[μ_i²] + E_x[σ_i²] − E_x[log σ_i²] − 1 ) ≥ ½ Σ_i E_x[μ_i²],

since s − log s − 1 ≥ 0. Batch-normalising μ without a learned scale and multiplying it by a
fixed-form γ_μ makes E_x[μ_i²] = γ_μ,i², so the KL cannot fall below ½ Σ_i γ_μ,i²: the latent
can never be ignored. The post splits the prior's unit variance between the two parts:

    μ = γ_μ · BN(μ_raw),   γ_μ = sqrt(τ + (1 − τ)·sigmoid(θ))
    σ = γ_σ · BN(σ_raw),   γ_σ = sqrt((1 − τ)·sigmoid(−θ))

so that E[μ_i²] + E[σ_i²] = 1 = the prior's second moment, with one learned θ per dimension and
τ ∈ [0, 1) the guaranteed share of μ. Then E KL_i = −½ E[log σ_i²] ≥ −½ log γ_σ,i² (Jensen),
which is at least ½γ_μ,i² (since −log(1 − u) ≥ u and γ_σ² = 1 − γ_μ²) and at least
−½ log(1 − τ) > 0. σ is signed here (normalising σ itself is what fixes E[σ²]); only σ²
enters q. The bounds hold for the mean over a training batch up to BN's ε, which shrinks a
batch's second moment by var/(var + ε): ε defaults to 1e-8 because raw encoder outputs can vary
by only ~1e-3 at initialisation.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

Tensor = torch.Tensor


class BatchNormLatent(nn.Module):
    """Batch normalisation of a Gaussian latent's mean (and standard deviation) with the scales
    γ_μ, γ_σ of the module docstring. Inputs are [B, dim]; in training mode the batch statistics
    normalise (so B ≥ 2), in eval mode the running ones.

    ``normalize_mean(mean_raw)`` gives μ, ``normalize_std(std_raw)`` gives σ, ``forward`` both;
    ``kl_lower_bound()`` is the floor of the batch-averaged KL.
    """

    def __init__(self, dim: int, tau: float = 0.5, eps: float = 1e-8, momentum: float = 0.1):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"BatchNormLatent: dim must be a positive integer, got {dim!r}")
        if not 0.0 <= tau < 1.0:
            raise ValueError(f"BatchNormLatent: tau must lie in [0, 1) (the share of the variance kept "
                             f"by the mean), got {tau!r}")
        self.dim, self.tau = dim, float(tau)
        # No affine part: the scale is γ_μ/γ_σ below and the shift is zero (the prior is centred).
        self.mean_norm = nn.BatchNorm1d(dim, eps=eps, momentum=momentum, affine=False)
        self.std_norm = nn.BatchNorm1d(dim, eps=eps, momentum=momentum, affine=False)
        self.theta = nn.Parameter(torch.zeros(dim))

    def mean_scale(self) -> Tensor:
        """γ_μ = sqrt(τ + (1 − τ)·sigmoid(θ)), shape [dim]."""
        return torch.sqrt(self.tau + (1 - self.tau) * torch.sigmoid(self.theta))

    def std_scale(self) -> Tensor:
        """γ_σ = sqrt((1 − τ)·sigmoid(−θ)), shape [dim]."""
        return torch.sqrt((1 - self.tau) * torch.sigmoid(-self.theta))

    def _check(self, t: Tensor, name: str) -> None:
        if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[1] != self.dim:
            got = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"BatchNormLatent: {name} must have shape [B, {self.dim}], got {got}")

    def normalize_mean(self, mean_raw: Tensor) -> Tensor:
        self._check(mean_raw, "mean_raw")
        return self.mean_norm(mean_raw) * self.mean_scale()

    def normalize_std(self, std_raw: Tensor) -> Tensor:
        self._check(std_raw, "std_raw")
        return self.std_norm(std_raw) * self.std_scale()

    def forward(self, mean_raw: Tensor, std_raw: Tensor) -> Tuple[Tensor, Tensor]:
        return self.normalize_mean(mean_raw), self.normalize_std(std_raw)

    def kl_lower_bound(self) -> Tensor:
        """−½ Σ_i log γ_σ,i²: the batch-averaged KL(q‖N(0, I)) of a latent whose μ and σ both go
        through this module is at least this, which is ≥ ½ Σ_i γ_μ,i² (the floor when only μ is
        normalised) and ≥ −½·dim·log(1 − τ)."""
        return -0.5 * torch.log(self.std_scale().square()).sum()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, tau={self.tau}"


__all__ = ["BatchNormLatent"]
