"""BN-VAE (post 变分自编码器（五）：VAE + BN = 更好的VAE; Zhu et al., ACL 2020, "A Batch Normalized
Inference Network Keeps the KL Vanishing Away").

The Gaussian VAE of ``vae`` whose encoder outputs are batch-normalised before they become the
posterior's parameters (``kexue.nn.bn_latent.BatchNormLatent``, the post's construction):

    μ = γ_μ ⊙ BN(μ_raw),   γ_μ = √(τ + (1 − τ)·sigmoid(θ)),
    σ = γ_σ ⊙ BN(σ_raw),   γ_σ = √((1 − τ)·sigmoid(−θ)),

where BN has no learned affine part (zero shift, unit scale), θ is learned (one per latent
dimension, as in the post's implementation) and τ ∈ [0, 1) is fixed. The encoder's second
output is a signed standard deviation σ (only σ² enters q), not log σ²: normalising σ itself is
what fixes the batch's second moment E[σ²] = γ_σ²; normalising log σ² would fix nothing about
σ². Over a training batch (BN's batch statistics) E[μ_i²] = γ_μ,i² and E[σ_i²] = γ_σ,i², so
E[μ_i²] + E[σ_i²] = 1 — the aggregate posterior has the prior's second moment — and

    E_batch KL_i = ½ (E[μ_i²] + E[σ_i²] − 1 − E[log σ_i²]) = −½ E[log σ_i²]
                 ≥ −½ log E[σ_i²] = −½ log γ_σ,i²                   (Jensen)
                 ≥ −½ log(1 − τ)  (> 0 for τ > 0),

(which also exceeds ½γ_μ,i² ≥ τ/2, the bound ½E[μ²] of the paper's argument). Whatever the
encoder does, the KL cannot vanish: the posterior cannot collapse onto the prior. The bounds
hold exactly for the batch mean in training mode up to BN's ε (which shrinks the batch second
moments by a factor var/(var + ε); ``BN_EPS`` keeps that negligible); in eval mode the running
statistics stand in for the batch's and they hold on average.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from torch.distributions import Distribution

from kexue.distributions import DiagonalNormal
from kexue.models.vae.vae import VAE
from kexue.nn.bn_latent import BatchNormLatent

Tensor = torch.Tensor
# σ = γ_σ·BN(σ_raw) can come out (almost) zero, where log σ² = −inf; this floor only matters for
# σ² below it (the KL term's −log σ² pushes σ away from zero long before).
MIN_VARIANCE = 1e-10
# BN's ε shrinks a batch's second moment to var/(var + ε), which breaks E[μ²] + E[σ²] = 1 (and the
# bound) by ~1% at initialisation, where the raw encoder outputs vary by ~1e-3; 1e-8 keeps it exact
# to ~1e-5 there.
BN_EPS = 1e-8


class BNVAE(VAE):
    """``VAE`` with the BN latent of the module docstring; ``tau`` the guaranteed share of μ in
    the prior's unit variance (the post's default 0.5). Other arguments as ``VAE``.

    Options:
    tau: share of the prior's unit variance guaranteed to the posterior means, in [0, 1); keeps
      the batch-averaged KL >= -1/2 log(1 - tau) per latent dimension
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, *, tau: float = 0.5, **kwargs):
        super().__init__(event_shape, n_levels, **kwargs)
        self.bn_latent = BatchNormLatent(self.latent_dim, tau, eps=BN_EPS)

    def _posterior(self, h: Tensor) -> Distribution:
        mean_raw, std_raw = h.chunk(2, dim=-1)
        if self.training and h.shape[0] < 2:
            raise ValueError("BNVAE: training-mode batches need at least 2 examples (BatchNorm uses the batch's "
                             "statistics); call model.eval() for single examples")
        mean, std = self.bn_latent(mean_raw, std_raw)
        return DiagonalNormal(mean, torch.log(std.square().clamp_min(MIN_VARIANCE)), validate_args=False)

    def kl_lower_bound(self) -> Tensor:
        """Σ_i −½ log γ_σ,i²: the bound on the batch-averaged KL (nats per example) of the module
        docstring; at least −½·latent_dim·log(1 − τ)."""
        return -0.5 * torch.log(self.bn_latent.std_scale().square()).sum()

    def loss(self, x: Tensor) -> Dict[str, Tensor]:
        out = super().loss(x)
        out["kl_bound"] = self.kl_lower_bound().detach()
        return out

    def guaranteed_kl(self) -> float:
        """−½·latent_dim·log(1 − τ): the KL floor for every θ."""
        return -0.5 * self.latent_dim * math.log(1 - self.bn_latent.tau)


__all__ = ["BNVAE", "BN_EPS", "MIN_VARIANCE"]
