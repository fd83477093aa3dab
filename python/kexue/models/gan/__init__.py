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
# One optimizer updates critic and generator together (kexue train's step): with the paper's
# λ = 10 that game orbits on 8gaussians (MMD² 0.42 after 4000 steps at lr 1e-4, 1.3 at 1e-3); λ = 1
# finds all eight modes (MMD² 0.078 after 6000 steps at lr 2e-4).
register_class("wgangp", WGANGP, default_data="8gaussians", steps=6000, batch_size=128, lr=2e-4,
               defaults=dict(gp_weight=1.0),
               description="WGAN-GP: Wasserstein critic with a gradient penalty (λ = 1 here; the paper's 10: --set gp_weight=10)")
register_class("ganqp", GANQP, default_data="digits", steps=8000, batch_size=64, lr=2e-4,
               description="GAN-QP: quadratic-potential critic loss, no Lipschitz constraint")
register_class("biganqp", BiGANQP, default_data="digits", steps=6000, batch_size=64, lr=2e-4,
               description="BiGAN-QP: encoder + generator, QP critic on (x, z) pairs, reconstruction terms")

__all__ = ["AdversarialModel", "BiGANQP", "DIVERGENCES", "FDivergence", "FGAN", "GANQP", "SNGAN", "WGANGP",
           "frozen", "get_divergence", "mmd2", "pair_distance", "qp_critic_loss"]
