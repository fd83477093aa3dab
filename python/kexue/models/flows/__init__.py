"""Normalizing-flow models (MODELS.md section A) and their ``kexue train`` entries."""
from kexue.models.flows.bertflow import BertFlow
from kexue.models.flows.density import FlowModel
from kexue.models.flows.fvae import FVAE
from kexue.models.flows.glow import Glow
from kexue.models.flows.iresnet import IResNet, ResidualFlow
from kexue.models.flows.nice import NICE
from kexue.models.flows.realnvp import RealNVP
from kexue.train.registry import register


def _builder(cls, **defaults):
    def build(dataset, **overrides):
        return cls(dataset.event_shape, dataset.n_levels, **{**defaults, **overrides})

    return build


register("nice", _builder(NICE), default_data="digits",
         description="NICE: additive coupling, diagonal scaling, logistic prior")
register("realnvp", _builder(RealNVP), default_data="moons",
         description="RealNVP: affine coupling with checkerboard/channel masks, multi-scale")
register("glow", _builder(Glow), default_data="digits",
         description="Glow: ActNorm, invertible 1x1 conv, affine coupling, split priors")
register("fvae", _builder(FVAE), default_data="digits",
         description="f-VAE: VAE whose posterior is a flow of N(0, I) (Su & Wu 2018)")
# Wider and deeper than f-VAE's encoder/decoder so that it has about f-VAE's parameter count
# (~90k on the digits): the paper's comparison is at equal size.
register("vae-baseline", _builder(FVAE, posterior="gaussian", hidden=128, blocks=8), default_data="digits",
         description="the plain Gaussian VAE of f-VAE's architecture, at f-VAE's size (baseline)")
register("bertflow", _builder(BertFlow), default_data="8gaussians",
         description="BERT-flow: vector Glow that Gaussianises sentence embeddings")

register("iresnet", _builder(IResNet), default_data="8gaussians",
         description="i-ResNet: spectrally normalised residual blocks, power-series log-det")
register("residualflow", _builder(ResidualFlow), default_data="8gaussians",
         description="Residual Flow: LipSwish blocks, Russian-roulette log-det, Neumann gradient")

__all__ = ["BertFlow", "FVAE", "FlowModel", "Glow", "IResNet", "NICE", "RealNVP", "ResidualFlow"]
