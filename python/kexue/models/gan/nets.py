"""Generator, critic and encoder networks shared by the GAN models.

All are MLPs on the flattened example: the data here are 2-D toys and 8×8 digits (64 values),
where an MLP trains several times faster on a CPU than a convolution stack and samples as well.

- The generator has batch normalisation after each hidden layer (as DCGAN's): it keeps the
  generator's output spread out, which is what stops mode collapse under the simultaneous
  updates of ``kexue.models.gan.base``; its output is linear (a tanh saturates when the
  critic pushes the digits' mostly black pixels to −1, and its gradient vanishes).
- Critics and encoders have no normalisation (batch statistics would break the per-sample
  gradient penalty of WGAN-GP and the pairwise QP loss) and LeakyReLU(0.2) activations.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import nn

from kexue.nn import spectral_norm

Tensor = torch.Tensor

# Slope of the critics' and encoders' LeakyReLU (DCGAN's choice).
LEAKY_SLOPE = 0.2
# Hidden layers of every MLP here.
DEPTH = 3


def check_event_shape(event_shape: Sequence[int], who: str) -> Tuple[int, ...]:
    shape = tuple(int(s) for s in event_shape)
    if len(shape) not in (1, 3) or any(s < 1 for s in shape):
        raise ValueError(f"{who}: event_shape must be [D] (vectors) or [C, H, W] (images), got {list(event_shape)}")
    return shape


def default_sizes(event_shape: Sequence[int]) -> Tuple[int, int]:
    """``(latent_dim, hidden)`` used when a model is given None: (8, 128) for vectors, (16, 256)
    for images — sized to train in about a minute on a CPU. (BiGAN-QP on the digits: a 16-dim
    latent reconstructs to mean squared error 0.16 in z after 2000 steps, a 32-dim one stays at
    ~1.0, i.e. E(G(z)) ignores z.)"""
    return (16, 256) if len(tuple(event_shape)) == 3 else (8, 128)


def _check_width(who: str, **sizes: int) -> None:
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{who}: {name} must be a positive integer, got {v!r}")


class Generator(nn.Module):
    """``z ~ N(0, I_latent_dim)`` → a sample in model space [B, *event_shape]:
    ``DEPTH`` × (Linear, BatchNorm, ReLU), then a linear output layer."""

    def __init__(self, event_shape: Sequence[int], latent_dim: int, hidden: int):
        super().__init__()
        self.event_shape = check_event_shape(event_shape, "Generator")
        _check_width("Generator", latent_dim=latent_dim, hidden=hidden)
        self.latent_dim = latent_dim
        layers: List[nn.Module] = []
        width = latent_dim
        for _ in range(DEPTH):
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
            width = hidden
        layers += [nn.Linear(hidden, math.prod(self.event_shape)), nn.Unflatten(1, self.event_shape)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"Generator: expected z [B, {self.latent_dim}], got {list(z.shape)}")
        return self.net(z)


class FeatureNet(nn.Module):
    """Data [B, *event_shape] → features [B, out_dim]: the body of critics and encoders,
    ``DEPTH`` × (Linear, LeakyReLU(0.2)) then a linear layer. ``spectral=True`` puts every
    weight under spectral normalisation (``kexue.nn.spectral_norm``; Miyato et al. 2018), which
    makes the net 1-Lipschitz."""

    def __init__(self, event_shape: Sequence[int], hidden: int, out_dim: int, spectral: bool = False):
        super().__init__()
        self.event_shape = check_event_shape(event_shape, "FeatureNet")
        _check_width("FeatureNet", hidden=hidden, out_dim=out_dim)
        layers: List[nn.Module] = [nn.Flatten()]
        width = math.prod(self.event_shape)
        for _ in range(DEPTH):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(LEAKY_SLOPE)]
            width = hidden
        layers.append(nn.Linear(hidden, out_dim))
        if spectral:
            for layer in layers:
                if isinstance(layer, nn.Linear):
                    spectral_norm(layer)
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Critic(nn.Module):
    """A scalar critic/discriminator ``V(x)`` of shape [B]."""

    def __init__(self, event_shape: Sequence[int], hidden: int, spectral: bool = False):
        super().__init__()
        self.body = FeatureNet(event_shape, hidden, 1, spectral=spectral)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).squeeze(-1)


class JointCritic(nn.Module):
    """BiGAN's critic ``D(x, z)`` of shape [B]: x goes through its own feature net to
    ``feature_dim`` features, which are concatenated with z and scored by a 2-layer MLP (the
    layout of the post's BiGAN-QP code: an x-encoder inside the discriminator, then a dense
    head)."""

    def __init__(self, event_shape: Sequence[int], latent_dim: int, hidden: int, feature_dim: int):
        super().__init__()
        _check_width("JointCritic", latent_dim=latent_dim, feature_dim=feature_dim)
        self.x_features = FeatureNet(event_shape, hidden, feature_dim)
        self.head = nn.Sequential(
            nn.Linear(feature_dim + latent_dim, hidden), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Linear(hidden, hidden), nn.LeakyReLU(LEAKY_SLOPE), nn.Linear(hidden, 1))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.head(torch.cat([self.x_features(x), z], dim=1)).squeeze(-1)


__all__ = ["Critic", "FeatureNet", "Generator", "JointCritic", "check_event_shape", "default_sizes"]
