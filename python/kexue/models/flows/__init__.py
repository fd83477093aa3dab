"""Normalizing-flow models (MODELS.md section A) and their ``kexue train`` entries."""
from kexue.models.flows.bertflow import BertFlow
from kexue.models.flows.density import FlowModel
from kexue.models.flows.fvae import FVAE
from kexue.models.flows.glow import Glow
from kexue.models.flows.iresnet import IResNet, ResidualFlow
from kexue.models.flows.nice import NICE
from kexue.models.flows.realnvp import RealNVP
from kexue.train.registry import register_class

register_class("nice", NICE, default_data="digits", steps=3000, batch_size=64,
               description="NICE: additive coupling, diagonal scaling, logistic prior")
register_class("realnvp", RealNVP, default_data="moons", steps=3000, batch_size=256,
               description="RealNVP: affine coupling with checkerboard/channel masks, multi-scale")
register_class("glow", Glow, default_data="digits", steps=3000, batch_size=64,
               description="Glow: ActNorm, invertible 1x1 conv, affine coupling, split priors")
register_class("fvae", FVAE, default_data="digits", steps=3000, batch_size=64,
               description="f-VAE: VAE whose posterior is a flow of N(0, I) (Su & Wu 2018)")
# Wider and deeper than f-VAE's encoder/decoder so that it has about f-VAE's parameter count
# (~90k on the digits): the paper's comparison is at equal size.
register_class("vae-baseline", FVAE, defaults=dict(posterior="gaussian", hidden=128, blocks=8),
               default_data="digits", steps=3000, batch_size=64,
               description="the plain Gaussian VAE of f-VAE's architecture, at f-VAE's size (baseline)")
register_class("bertflow", BertFlow, default_data="8gaussians", steps=2000, batch_size=256,
               description="BERT-flow: vector Glow that Gaussianises sentence embeddings (.npy [N, D])")

register_class("iresnet", IResNet, default_data="8gaussians", steps=8000, batch_size=256,
               description="i-ResNet: spectrally normalised residual blocks, power-series log-det")
# 16 blocks at lr 2e-3: with the class's 8 blocks at 1e-3 the density is still one ring after
# 10000 steps (1.30 nats); these reach all eight modes (0.75 nats) in 4000.
register_class("residualflow", ResidualFlow, default_data="8gaussians", steps=4000, batch_size=256, lr=2e-3,
               defaults=dict(n_blocks=16),
               description="Residual Flow: LipSwish blocks, Russian-roulette log-det, Neumann gradient")

__all__ = ["BertFlow", "FVAE", "FlowModel", "Glow", "IResNet", "NICE", "RealNVP", "ResidualFlow"]
