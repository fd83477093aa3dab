"""GANs with a Lipschitz-constrained critic (post 深度学习中的Lipschitz约束：泛化与生成模型):
SN-GAN (Miyato et al. 2018: every critic weight spectrally normalised) and WGAN-GP (Gulrajani
et al. 2017: a gradient penalty at random interpolates of real and fake samples)."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from kexue.models.gan.base import AdversarialModel
from kexue.models.gan.fgan import FGAN
from kexue.models.gan.nets import Critic, Generator
from kexue.nn import gradient_penalty

Tensor = torch.Tensor

SNGAN_OBJECTIVES = ("hinge", "nonsaturating")


class SNGAN(FGAN):
    """A GAN whose critic has every Linear/Conv weight under ``kexue.nn.spectral_norm``.

    ``objective="hinge"`` (Miyato et al.'s best): the critic minimises
    ``E relu(1 − V(x_r)) + E relu(1 + V(x_f))`` and the generator ``−E V(x_f)``.
    ``"nonsaturating"``: the original GAN loss, i.e. the f-GAN ``"gan"`` entry with the
    alternative generator objective ``−E log σ(V(x_f))``.

    Options:
    objective: 'hinge' (hinge critic loss, generator -E V(x_f)) or 'nonsaturating' (the
      original GAN loss)
    latent_dim: dimension of the generator's N(0, I) latent z (None: 8 for vectors, 16 for images)
    hidden: width of the generator's and critic's hidden layers (None: 128 for vectors, 256 for images)
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, objective: str = "hinge",
                 latent_dim: Optional[int] = None, hidden: Optional[int] = None):
        if objective not in SNGAN_OBJECTIVES:
            raise ValueError(f"SNGAN: objective must be one of {', '.join(SNGAN_OBJECTIVES)}, got {objective!r}")
        super().__init__(event_shape, n_levels, divergence="gan", generator_objective="alternative",
                         latent_dim=latent_dim, hidden=hidden, spectral=True)
        self.objective = objective

    def critic_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        if self.objective == "nonsaturating":
            return super().critic_loss(real, fake)
        v_real, v_fake = self._scores(real, fake)
        return F.relu(1 - v_real).mean() + F.relu(1 + v_fake).mean()

    def generator_loss(self, real: Tensor, fake: Tensor, critic: Optional[Callable[..., Tensor]] = None) -> Tensor:
        if self.objective == "nonsaturating":
            return super().generator_loss(real, fake, critic)
        return -(critic or self.critic)(fake).mean()

    def critic_metrics(self, real: Tensor, fake: Tensor) -> Dict[str, Tensor]:
        """Mean critic scores on data and on samples (and the GAN bound for the
        non-saturating objective)."""
        v_real, v_fake = self._scores(real, fake)
        out = {"d_real": v_real.mean(), "d_fake": v_fake.mean()}
        if self.objective == "nonsaturating":
            out["bound"] = self.divergence.bound_from_logits(v_real, v_fake)
        return out


class WGANGP(AdversarialModel):
    """WGAN-GP: the critic minimises ``E V(x_f) − E V(x_r) + λ E(‖∇V(x̂)‖ − 1)²`` with
    ``x̂ = αx_r + (1−α)x_f``, α ~ U[0, 1] per pair (``kexue.nn.gradient_penalty``; α comes from
    the global RNG, which ``kexue.train`` seeds per step); the generator minimises ``−E V(x_f)``.

    Options:
    gp_weight: weight lambda of the gradient penalty (|grad V(x_hat)| - 1)² in the critic loss, >= 0
    latent_dim: dimension of the generator's N(0, I) latent z (None: 8 for vectors, 16 for images)
    hidden: width of the generator's and critic's hidden layers (None: 128 for vectors, 256 for images)
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, gp_weight: float = 10.0,
                 latent_dim: Optional[int] = None, hidden: Optional[int] = None):
        super().__init__(event_shape, n_levels, latent_dim, hidden)
        if not gp_weight >= 0:
            raise ValueError(f"WGANGP: gp_weight must be >= 0, got {gp_weight!r}")
        self.gp_weight = float(gp_weight)
        self.generator = Generator(self.event_shape, self.latent_dim, self.hidden)
        self.critic = Critic(self.event_shape, self.hidden)

    def critic_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        v = self.critic(torch.cat([real, fake]))
        gap = v[real.shape[0]:].mean() - v[:real.shape[0]].mean()
        return gap + gradient_penalty(self.critic, real, fake, lam=self.gp_weight)

    def generator_loss(self, real: Tensor, fake: Tensor, critic: Optional[Callable[..., Tensor]] = None) -> Tensor:
        return -(critic or self.critic)(fake).mean()

    def critic_metrics(self, real: Tensor, fake: Tensor) -> Dict[str, Tensor]:
        """``wasserstein``: ``E V(x_r) − E V(x_f)``, the critic's estimate of W₁(data, model)."""
        v = self.critic(torch.cat([real, fake]))
        return {"wasserstein": v[:real.shape[0]].mean() - v[real.shape[0]:].mean()}


__all__ = ["SNGAN", "SNGAN_OBJECTIVES", "WGANGP"]
