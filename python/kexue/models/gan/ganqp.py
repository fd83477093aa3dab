"""GAN-QP and BiGAN-QP (Su 2018; posts 不用L约束又不会梯度消失的GAN，了解一下？ and
BiGAN-QP：简单清晰的编码&生成模型): a quadratic potential replaces the Lipschitz constraint.

With ``Δ = D(x_r) − D(x_f)`` on pairs of a real and a fake sample,

    critic:     max_D  E[Δ − Δ² / (2λ·d(x_r, x_f))]
    generator:  min_G  E[Δ]

The quadratic term bounds ``Δ`` by ``λ·d`` in the optimum, so D needs no Lipschitz constraint,
and the optimal D turns the generator's objective into a divergence that does not saturate.
Sign convention (the post's): the critic scores real samples high; the generator raises the
fakes' scores. ``d`` is the post code's per-sample distance: the mean absolute difference
(``"l1"``) or the root mean square difference (``"l2"``) over the elements; λ = 10.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from kexue.models.gan.base import AdversarialModel, frozen
from kexue.metrics import mmd2
from kexue.models.gan.nets import Critic, FeatureNet, Generator, JointCritic

Tensor = torch.Tensor

DISTANCES = ("l1", "l2")
# Floor of the pair distance: identical pairs would divide the quadratic term by zero.
MIN_DISTANCE = 1e-6


def pair_distance(a: Tensor, b: Tensor, kind: str = "l1") -> Tensor:
    """Per-pair distance [B] of ``a`` and ``b`` [B, ...]: ``mean|a − b|`` ("l1") or
    ``sqrt(mean (a − b)²)`` ("l2"), the mean over all non-batch elements."""
    if kind not in DISTANCES:
        raise ValueError(f"pair_distance: kind must be one of {', '.join(DISTANCES)}, got {kind!r}")
    if a.shape != b.shape:
        raise ValueError(f"pair_distance: a {list(a.shape)} and b {list(b.shape)} differ in shape")
    diff = (a - b).flatten(1)
    return diff.abs().mean(1) if kind == "l1" else diff.square().mean(1).sqrt()


def qp_critic_loss(score_real: Tensor, score_fake: Tensor, distance: Tensor, lam: float) -> Tensor:
    """The critic's loss ``−E[Δ − Δ²/(2λd)]``, ``Δ = score_real − score_fake`` per pair."""
    delta = score_real - score_fake
    return (delta.square() / (2 * lam * distance.clamp_min(MIN_DISTANCE)) - delta).mean()


def _check_qp(who: str, lam: float, distance: str) -> None:
    if not lam > 0:
        raise ValueError(f"{who}: lam must be positive, got {lam!r}")
    if distance not in DISTANCES:
        raise ValueError(f"{who}: distance must be one of {', '.join(DISTANCES)}, got {distance!r}")


class GANQP(AdversarialModel):
    """GAN-QP: the pairs are (batch[i], G(z_i)); ``critic_metrics`` reports ``qp_gap`` = E[Δ].

    Options:
    lam: lambda of the quadratic potential Δ²/(2·lambda·d) in the critic loss, > 0 (bounds Δ by
      lambda·d at the optimum)
    distance: per-pair distance d of a real and a fake sample: 'l1' (mean absolute difference)
      or 'l2' (root mean square difference)
    latent_dim: dimension of the generator's N(0, I) latent z (None: 8 for vectors, 16 for images)
    hidden: width of the generator's and critic's hidden layers (None: 128 for vectors, 256 for images)
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, lam: float = 10.0,
                 distance: str = "l1", latent_dim: Optional[int] = None, hidden: Optional[int] = None):
        super().__init__(event_shape, n_levels, latent_dim, hidden)
        _check_qp("GANQP", lam, distance)
        self.lam, self.distance = float(lam), distance
        self.generator = Generator(self.event_shape, self.latent_dim, self.hidden)
        self.critic = Critic(self.event_shape, self.hidden)

    def _scores(self, real: Tensor, fake: Tensor) -> Tuple[Tensor, Tensor]:
        v = self.critic(torch.cat([real, fake]))
        return v[:real.shape[0]], v[real.shape[0]:]

    def critic_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        return qp_critic_loss(*self._scores(real, fake), pair_distance(real, fake, self.distance), self.lam)

    def generator_loss(self, real: Tensor, fake: Tensor, critic: Optional[Callable[..., Tensor]] = None) -> Tensor:
        critic = critic or self.critic
        return (critic(real) - critic(fake)).mean()

    def critic_metrics(self, real: Tensor, fake: Tensor) -> Dict[str, Tensor]:
        v_real, v_fake = self._scores(real, fake)
        return {"qp_gap": (v_real - v_fake).mean()}


class BiGANQP(AdversarialModel):
    """BiGAN-QP: an encoder ``E: x → z`` beside the generator; the joint critic ``D(x, z)``
    separates real pairs ``(x, E(x))`` from fake pairs ``(G(z), z)`` with the QP loss, the pair
    distance being ``d(x, G(z)) + d(E(x), z)``. The generator and encoder minimise

        E[D(x, E(x)) − D(G(z), z)] + w_z·E‖z − E(sg G(z))‖² + w_x·E‖x − G(sg E(x))‖²

    (``sg`` = stop gradient; squared errors averaged over elements): the post's reconstruction
    terms, each training one network — the latent one the encoder, the pixel one the generator.
    Defaults ``w_z = 2``, ``w_x = 3`` and λ = 10 follow the post's code.

    Options:
    lam: lambda of the quadratic potential Δ²/(2·lambda·d) in the critic loss, > 0
    distance: per-element distance used for both parts of the pair distance d(x, G(z)) +
      d(E(x), z): 'l1' (mean absolute difference) or 'l2' (root mean square difference)
    latent_weight: weight w_z of the latent reconstruction error |z - E(G(z))|² (trains the
      encoder), >= 0
    pixel_weight: weight w_x of the pixel reconstruction error |x - G(E(x))|² (trains the
      generator), >= 0
    latent_dim: dimension of the latent z (the prior N(0, I) and the encoder's output; None: 8
      for vectors, 16 for images)
    hidden: width of the generator's, encoder's and critic's hidden layers (None: 128 for
      vectors, 256 for images)
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, lam: float = 10.0,
                 distance: str = "l1", latent_weight: float = 2.0, pixel_weight: float = 3.0,
                 latent_dim: Optional[int] = None, hidden: Optional[int] = None):
        super().__init__(event_shape, n_levels, latent_dim, hidden)
        _check_qp("BiGANQP", lam, distance)
        for name, w in (("latent_weight", latent_weight), ("pixel_weight", pixel_weight)):
            if not w >= 0:
                raise ValueError(f"BiGANQP: {name} must be >= 0, got {w!r}")
        self.lam, self.distance = float(lam), distance
        self.latent_weight, self.pixel_weight = float(latent_weight), float(pixel_weight)
        self.generator = Generator(self.event_shape, self.latent_dim, self.hidden)
        self.encoder = FeatureNet(self.event_shape, self.hidden, self.latent_dim)
        self.critic = JointCritic(self.event_shape, self.latent_dim, self.hidden, feature_dim=self.latent_dim)

    def encode(self, x: Tensor) -> Tensor:
        """``E(x)`` [B, latent_dim] for a data-space batch."""
        self.check_batch(x)
        return self.encoder(self.to_model_space(x))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """``G(E(x))`` in data space (the generator in eval mode, as in ``sample``)."""
        z = self.encode(x)
        with self.generator_in_eval_mode() as g:
            return self.to_data_space(g(z))

    def critic_loss(self, real: Tuple[Tensor, Tensor], fake: Tuple[Tensor, Tensor]) -> Tensor:
        """QP critic loss on real pairs ``(x, E(x))`` and fake pairs ``(G(z), z)`` (pass them
        detached from the generator and encoder)."""
        (x, z_enc), (x_gen, z) = real, fake
        dist = pair_distance(x, x_gen, self.distance) + pair_distance(z_enc, z, self.distance)
        scores = self.critic(torch.cat([x, x_gen]), torch.cat([z_enc, z]))
        return qp_critic_loss(scores[:x.shape[0]], scores[x.shape[0]:], dist, self.lam)

    def generator_loss(self, real: Tuple[Tensor, Tensor], fake: Tuple[Tensor, Tensor],
                       critic: Optional[Callable[..., Tensor]] = None) -> Tensor:
        """The adversarial part ``E[D(x, E(x)) − D(G(z), z)]`` of the generator/encoder loss."""
        critic = critic or self.critic
        (x, z_enc), (x_gen, z) = real, fake
        return (critic(x, z_enc) - critic(x_gen, z)).mean()

    def reconstruction_losses(self, x: Tensor, z_enc: Tensor, x_gen: Tensor, z: Tensor) -> Tuple[Tensor, Tensor]:
        """``(E‖z − E(sg G(z))‖², E‖x − G(sg E(x))‖²)``, means over elements."""
        latent = (z - self.encoder(x_gen.detach())).square().mean()
        pixel = (x - self.generator(z_enc.detach())).square().mean()
        return latent, pixel

    def _forward(self, batch: Tensor, generator: Optional[torch.Generator]):
        self.check_training_batch(batch)
        x = self.to_model_space(batch)
        z = self.draw_latent(x.shape[0], generator)
        return x, self.encoder(x), self.generator(z), z

    def loss(self, batch: Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """Critic loss + generator/encoder loss with the gradients kept apart as in
        ``kexue.models.gan.base``."""
        x, z_enc, x_gen, z = self._forward(batch, generator)
        loss_d = self.critic_loss((x, z_enc.detach()), (x_gen.detach(), z))
        loss_g = self.generator_loss((x, z_enc), (x_gen, z), frozen(self.critic))
        rec_z, rec_x = self.reconstruction_losses(x, z_enc, x_gen, z)
        total = loss_d + loss_g + self.latent_weight * rec_z + self.pixel_weight * rec_x
        return {"loss": total, "loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
                "rec_z": rec_z.detach(), "rec_x": rec_x.detach()}

    @torch.no_grad()
    def evaluate(self, batch: Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """``qp_gap`` (E of the critic's real − fake score), the two reconstruction errors, and the
        MMD between the batch and as many samples."""
        x, z_enc, x_gen, z = self._forward(batch, generator)
        scores = self.critic(torch.cat([x, x_gen]), torch.cat([z_enc, z]))
        rec_z, rec_x = self.reconstruction_losses(x, z_enc, x_gen, z)
        return {"qp_gap": (scores[:x.shape[0]] - scores[x.shape[0]:]).mean(), "rec_z": rec_z, "rec_x": rec_x,
                "mmd": mmd2(x, x_gen)}


__all__ = ["BiGANQP", "DISTANCES", "GANQP", "pair_distance", "qp_critic_loss"]
