"""Probability distributions the models need beyond ``torch.distributions``: the von Mises-Fisher
distribution on the sphere (with the Bessel functions behind it), the uniform distribution on the
sphere, and a diagonal Gaussian parameterised by its log-variance. All sample with an optional
``torch.Generator``."""
from kexue.distributions.bessel import bessel_iv_ratio, log_bessel_iv, log_bessel_iv_and_ratio
from kexue.distributions.hyperspherical_uniform import HypersphericalUniform, log_sphere_area
from kexue.distributions.normal import DiagonalNormal
from kexue.distributions.von_mises_fisher import (
    VonMisesFisher,
    kl_vmf_uniform,
    log_normalizer,
    mean_resultant_length,
    sample_cosine,
    vmf_entropy,
)

__all__ = [
    "DiagonalNormal",
    "HypersphericalUniform",
    "VonMisesFisher",
    "bessel_iv_ratio",
    "kl_vmf_uniform",
    "log_bessel_iv",
    "log_bessel_iv_and_ratio",
    "log_normalizer",
    "log_sphere_area",
    "mean_resultant_length",
    "sample_cosine",
    "vmf_entropy",
]
