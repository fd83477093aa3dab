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
from kexue.train.registry import register_class

register_class("fgan", FGAN, default_data="8gaussians", steps=2000, batch_size=128,
               description="f-GAN: critic maximises an f-divergence bound (--set divergence=js|kl|reverse_kl|...)")
register_class("sngan", SNGAN, default_data="digits", steps=2000, batch_size=64, lr=2e-4,
               description="SN-GAN: spectrally normalised critic, hinge loss")
register_class("wgangp", WGANGP, default_data="8gaussians", steps=2000, batch_size=128,
               description="WGAN-GP: Wasserstein critic with a gradient penalty (λ=10)")
register_class("ganqp", GANQP, default_data="digits", steps=2000, batch_size=64, lr=2e-4,
               description="GAN-QP: quadratic-potential critic loss, no Lipschitz constraint")
register_class("biganqp", BiGANQP, default_data="digits", steps=2000, batch_size=64, lr=2e-4,
               description="BiGAN-QP: encoder + generator, QP critic on (x, z) pairs, reconstruction terms")

__all__ = ["AdversarialModel", "BiGANQP", "DIVERGENCES", "FDivergence", "FGAN", "GANQP", "SNGAN", "WGANGP",
           "frozen", "get_divergence", "mmd2", "pair_distance", "qp_critic_loss"]
