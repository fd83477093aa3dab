"""Deep INFOMAX (Hjelm et al. 2019; post 深度学习的互信息：无监督提取特征): an encoder trained
without a decoder, by maximising the mutual information between the image and its code.

The post's objective for a Gaussian encoder ``p(z|x) = N(μ(x), diag σ²(x))`` is

    loss = α·L_global + β·L_local + γ·KL(p(z|x) ‖ N(0, I))

- ``L_global = −Î_JS(x; z)``: a discriminator ``T(x, z)`` scores matched pairs (the image's
  feature map, its own sampled code) against shuffled pairs (a feature map with another image's
  code); ``Î_JS = E_matched[log σ(T)] + E_shuffled[log(1 − σ(T))]``, the Jensen–Shannon
  estimator of MI, which is the original-GAN row of the f-GAN table
  (``kexue.models.gan.divergences``, entry ``"gan"``). The x side is the flattened local
  feature map, as in Hjelm et al.'s global DIM.
- ``L_local``: the same estimator between the code and every position of the local feature
  map (a 1×1-convolution discriminator on [feature, code] at each position): the code must
  carry what all parts of the image share, not one part's details.
- The prior term makes the codes' distribution close to N(0, I) (the VAE's KL, averaged over
  the code's dimensions as in the post's code).

Weights α = 0.5, β = 1.5, γ = 0.01 are the post's. The features for retrieval are ``μ(x)``
(``encode``).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from kexue import _random
from kexue.models.gan.divergences import get_divergence

Tensor = torch.Tensor

LEAKY_SLOPE = 0.2
# Side length the 2×2 max-pools reduce the image to, at most, for the local feature map (the
# post: 32×32 → 4×4; the 8×8 digits → 4×4).
LOCAL_SIDE = 4


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(LEAKY_SLOPE))


class DeepInfoMax(nn.Module):
    """Images [C, H, W] (discrete with ``n_levels``, or floats in [0, 1]).

    Encoder: a 3×3 conv block (conv, batch norm, LeakyReLU), then (conv block, 2× max-pool)
    until the ``hidden``-channel local feature map has side ≤ ``LOCAL_SIDE``; then two conv blocks with
    ``2·hidden`` channels, global max pooling, and linear heads for μ and log σ² of the
    ``z_dim``-dimensional code. Discriminators: an MLP on [flattened feature map, z] (global)
    and 1×1 convolutions on [feature, z] per position (local), ``hidden`` wide.

    Options:
    z_dim: dimension of the Gaussian code z (and of the retrieval features mu(x))
    hidden: channels of the local feature map (2x in the global encoder) and width of the
      discriminators
    alpha: weight of the global mutual-information term (image feature map vs code), >= 0
    beta: weight of the local mutual-information term (each feature-map position vs code), >= 0
    gamma: weight of the KL(p(z|x) || N(0, I)) prior term (averaged over the code's
      dimensions), >= 0
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, z_dim: int = 32,
                 hidden: int = 64, alpha: float = 0.5, beta: float = 1.5, gamma: float = 0.01):
        super().__init__()
        shape = tuple(int(s) for s in event_shape)
        if len(shape) != 3 or any(s < 1 for s in shape):
            raise ValueError(f"DeepInfoMax: event_shape must be an image [C, H, W], got {list(event_shape)}")
        for name, v in (("z_dim", z_dim), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DeepInfoMax: {name} must be a positive integer, got {v!r}")
        for name, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if not v >= 0:
                raise ValueError(f"DeepInfoMax: {name} must be >= 0, got {v!r}")
        if n_levels is not None and (isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2):
            raise ValueError(f"DeepInfoMax: n_levels must be an integer >= 2 or None, got {n_levels!r}")
        c, h, w = shape
        self.event_shape, self.n_levels, self.z_dim = shape, n_levels, z_dim
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        pools = max(0, math.ceil(math.log2(max(min(h, w), 1) / LOCAL_SIDE)))
        local = [_conv_block(c, hidden)]
        for _ in range(pools):
            local += [_conv_block(hidden, hidden), nn.MaxPool2d(2)]
        self.local_encoder = nn.Sequential(*local)
        m_shape = (hidden, h >> pools, w >> pools)  # each MaxPool2d(2) floors the side
        self.local_shape = m_shape
        self.global_encoder = nn.Sequential(_conv_block(hidden, 2 * hidden), _conv_block(2 * hidden, 2 * hidden),
                                            nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.mean_head = nn.Linear(2 * hidden, z_dim)
        self.logvar_head = nn.Linear(2 * hidden, z_dim)
        self.global_critic = nn.Sequential(
            nn.Linear(math.prod(m_shape) + z_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1))
        self.local_critic = nn.Sequential(
            nn.Conv2d(hidden + z_dim, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, 1, 1))
        self.mi_estimator = get_divergence("gan")

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"DeepInfoMax: expected a tensor batch, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"DeepInfoMax: expected images [B, {', '.join(map(str, self.event_shape))}], "
                             f"got {list(x.shape)}")

    def _scale(self, x: Tensor) -> Tensor:
        """The post's input scaling: pixels in [−0.5, 0.5]."""
        x = x.to(self.mean_head.weight.dtype)
        return (x / (self.n_levels - 1) if self.n_levels is not None else x) - 0.5

    def features(self, x: Tensor):
        """(local feature map [B, hidden, h, w], μ [B, z_dim], log σ² [B, z_dim])."""
        self._check(x)
        m = self.local_encoder(self._scale(x))
        g = self.global_encoder(m)
        return m, self.mean_head(g), self.logvar_head(g)

    def encode(self, x: Tensor) -> Tensor:
        """The code's mean μ(x) [B, z_dim]: the features used for retrieval."""
        return self.features(x)[1]

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(x)

    def _terms(self, x: Tensor, generator: Optional[torch.Generator]) -> Dict[str, Tensor]:
        self._check(x)
        b = x.shape[0]
        if b < 2:
            raise ValueError(f"DeepInfoMax: the MI estimators need a batch of at least 2 images, got {b}")
        m, mean, logvar = self.features(x)
        z = mean + torch.exp(0.5 * logvar) * _random.randn(mean.shape, generator=generator, device=mean.device,
                                                         dtype=mean.dtype)
        prior_kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean()
        # Shuffled pairs: image perm[i] with the code of image perm[i−1]; never its own code.
        perm = torch.randperm(b, generator=generator, device=mean.device)
        m_neg, z_neg = m[perm], z[perm.roll(1)]

        def global_scores(feat: Tensor, code: Tensor) -> Tensor:
            return self.global_critic(torch.cat([feat.flatten(1), code], 1)).squeeze(1)

        def local_scores(feat: Tensor, code: Tensor) -> Tensor:
            code_map = code[:, :, None, None].expand(-1, -1, *feat.shape[2:])
            return self.local_critic(torch.cat([feat, code_map], 1)).flatten()

        global_mi = self.mi_estimator.bound_from_logits(global_scores(m, z), global_scores(m_neg, z_neg))
        local_mi = self.mi_estimator.bound_from_logits(local_scores(m, z), local_scores(m_neg, z_neg))
        loss = -self.alpha * global_mi - self.beta * local_mi + self.gamma * prior_kl
        return {"loss": loss, "global_mi": global_mi, "local_mi": local_mi, "prior_kl": prior_kl}

    def loss(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """The post's loss and its parts: ``global_mi`` and ``local_mi`` are the JS estimates
        ``Î_JS`` (at most 0; −log 4 at chance), ``prior_kl`` the per-dimension KL."""
        out = self._terms(x, generator)
        return {k: (v if k == "loss" else v.detach()) for k, v in out.items()}

    @torch.no_grad()
    def evaluate(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        return self._terms(x, generator)


__all__ = ["DeepInfoMax"]
