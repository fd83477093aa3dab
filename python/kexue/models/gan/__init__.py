"""GANs and divergences (MODELS.md G1–G3): the f-divergence table and f-GAN, SN-GAN, WGAN-GP,
GAN-QP and BiGAN-QP, with their ``kexue train`` entries. Every model trains through one
``loss(batch)`` per step (see ``kexue.models.gan.base`` for how both players get their own
gradients from it)."""
from kexue.models.gan.base import AdversarialModel, frozen
from kexue.models.gan.divergences import DIVERGENCES, FDivergence, get_divergence
from kexue.models.gan.fgan import FGAN
from kexue.models.gan.ganqp import BiGANQP, GANQP, pair_distance, qp_critic_loss
from kexue.models.gan.lipschitz import SNGAN, WGANGP
from kexue.metrics import mmd2
from kexue.train.registry import register


def _builder(cls):
    def build(dataset, **overrides):
        return cls(dataset.event_shape, dataset.n_levels, **overrides)

    return build


register("fgan", _builder(FGAN), default_data="8gaussians",
         description="f-GAN: critic maximises an f-divergence bound (--set divergence=js|kl|reverse_kl|...)")
register("sngan", _builder(SNGAN), default_data="digits",
         description="SN-GAN: spectrally normalised critic, hinge loss")
register("wgangp", _builder(WGANGP), default_data="8gaussians",
         description="WGAN-GP: Wasserstein critic with a gradient penalty (λ=10)")
register("ganqp", _builder(GANQP), default_data="digits",
         description="GAN-QP: quadratic-potential critic loss, no Lipschitz constraint")
register("biganqp", _builder(BiGANQP), default_data="digits",
         description="BiGAN-QP: encoder + generator, QP critic on (x, z) pairs, reconstruction terms")

__all__ = ["AdversarialModel", "BiGANQP", "DIVERGENCES", "FDivergence", "FGAN", "GANQP", "SNGAN", "WGANGP",
           "frozen", "get_divergence", "mmd2", "pair_distance", "qp_critic_loss"]
