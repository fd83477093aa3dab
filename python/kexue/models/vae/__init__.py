"""Variational autoencoders (MODELS.md section F) and their ``kexue train`` entries: the Gaussian VAE,
BN-VAE, vMF-VAE, NVAE, the CNN-VAE poetry generator, and the importance-sampled likelihood that
compares them."""
from kexue.models.vae import nvae, poetry  # noqa: F401  (they register their own models)
from kexue.models.vae.bnvae import BNVAE
from kexue.models.vae.likelihood import log_likelihood
from kexue.models.vae.observations import OBSERVATIONS, make_observation
from kexue.models.vae.vae import VAE
from kexue.models.vae.vmf import VMFVAE
from kexue.train.registry import register_class

register_class("vae", VAE, default_data="digits", steps=2000, batch_size=64,
               description="VAE: Gaussian posterior, closed-form KL, categorical/Bernoulli/Gaussian decoder, beta weight")
register_class("bnvae", BNVAE, default_data="digits", steps=2000, batch_size=64,
               description="BN-VAE: batch-normalised posterior mean/std with scales tied by tau, KL bounded away from 0")
register_class("vmfvae", VMFVAE, default_data="digits", steps=2000, batch_size=64,
               description="vMF-VAE: von Mises-Fisher posterior of fixed kappa on the sphere, uniform prior, constant KL")

__all__ = ["BNVAE", "OBSERVATIONS", "VAE", "VMFVAE", "log_likelihood", "make_observation"]

from kexue.models.vae.univae import UniVAE  # noqa: E402  (registers "univae")

__all__ += ["UniVAE"]
