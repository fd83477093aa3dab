"""vMF-VAE (post 变分自编码器（七）：球面上的VAE（vMF-VAE）; Davidson et al. 2018, Xu & Durrett 2018).

The latent lives on the unit sphere S^{d−1} (d = ``latent_dim``): prior p(z) uniform on the
sphere, posterior q(z|x) = vMF(μ(x), κ) with μ(x) the encoder's output normalised to unit
length and κ a fixed hyperparameter. The KL term

    KL(vMF(μ, κ) ‖ U(S^{d−1})) = log C_d(κ) + κ A_d(κ) + log |S^{d−1}|

depends on κ and d only: with κ fixed it is a constant, so the loss is the reconstruction term
alone and the posterior can never collapse (the post's motivation; a large κ means a low-noise,
high-information code, KL growing like (d−1)/2·log κ). Samples are drawn by Wood's algorithm
(``kexue.distributions.VonMisesFisher``), reparameterised with respect to μ. Decoder,
likelihoods and loss are those of the Gaussian VAE (``vae``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.distributions import Distribution

from kexue import _random
from kexue.distributions import VonMisesFisher, kl_vmf_uniform, log_sphere_area
from kexue.models.vae.vae import VAE

Tensor = torch.Tensor


class VMFVAE(VAE):
    """``VAE`` with a vMF posterior of fixed concentration ``kappa`` on S^{latent_dim−1} and a
    uniform prior (``latent_dim`` ≥ 2). Other arguments as ``VAE``.

    Options:
    kappa: fixed concentration of the vMF posterior, > 0 (larger: less noise, a larger constant KL)
    latent_dim: dimension d of the latent space, >= 2 (codes lie on the unit sphere S^(d-1))
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, *, kappa: float = 50.0, **kwargs):
        if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not math.isfinite(kappa) or kappa <= 0:
            raise ValueError(f"VMFVAE: kappa (the posterior's concentration) must be a finite number > 0, got {kappa!r}")
        super().__init__(event_shape, n_levels, **kwargs)
        # A buffer, so a checkpoint carries the κ it was trained with.
        self.register_buffer("kappa", torch.tensor(float(kappa)))

    def _min_latent_dim(self) -> int:
        return 2

    def _encoder_outputs(self) -> int:
        return self.latent_dim

    def _posterior(self, h: Tensor) -> Distribution:
        return VonMisesFisher(F.normalize(h, dim=-1), self.kappa.to(h.dtype), validate_args=False)

    def kl(self, posterior: Distribution) -> Tensor:
        return self.kl_constant().to(posterior.loc.dtype).expand(posterior.batch_shape)

    def kl_constant(self) -> Tensor:
        """The KL term, the same for every x: KL(vMF(·, κ) ‖ U(S^{d−1})) in nats."""
        return kl_vmf_uniform(self.latent_dim, self.kappa)

    def prior_log_prob(self, z: Tensor) -> Tensor:
        return torch.full(z.shape[:-1], -log_sphere_area(self.latent_dim), device=z.device, dtype=z.dtype)

    def sample_prior(self, n: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:
        """n points uniform on the sphere. The uniform prior has no temperature (every direction
        is equally likely), so ``temperature`` must be 1."""
        if temperature != 1.0:
            raise ValueError(f"VMFVAE: the uniform prior on the sphere has no temperature; got temperature={temperature!r}")
        p = self._anchor()
        z = _random.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype)
        return F.normalize(z, dim=-1)

    def latent_grid(self, n: int) -> Tensor:
        """n·n points of the circle (latent_dim = 2) at equal angles, starting at (1, 0), so that
        a row-by-row n×n image grid reads as one walk around the sphere S¹."""
        self._require_2d_latent()
        p = self._anchor()
        angle = torch.arange(n * n, device=p.device, dtype=p.dtype) * (2 * math.pi / (n * n))
        return torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)


__all__ = ["VMFVAE"]
