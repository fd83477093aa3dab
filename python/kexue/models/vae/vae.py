"""The Gaussian VAE (posts 变分自编码器（一）（二）（三）; Kingma & Welling 2014), the base class of
BN-VAE and vMF-VAE.

Model: prior p(z) = N(0, I); encoder q(z|x) = N(μ(x), diag σ²(x)) from an MLP that outputs
(μ, log σ²); decoder p(x|z) from an MLP (``observations``: a per-pixel categorical over the
levels for discrete data by default, or Bernoulli / Gaussian). Per image, in nats,

    −ELBO(x) = E_{q(z|x)}[−log p(x|z)] + KL(q(z|x) ‖ p(z)),
    KL = ½ Σ_i (μ_i² + σ_i² − log σ_i² − 1)                        (closed form),

with the expectation estimated by one reparameterised draw z = μ + σ ⊙ ε, ε ~ N(0, I), so that
gradients reach the encoder. Training minimises ``recon + β·KL``.

The β knob: the information-bottleneck view (post 变分自编码器（六）：从几何视角来理解VAE的尝试, and
the post on VAE, information bottleneck and the normal distribution). The encoder is a noisy
channel x → z: z = μ(x) + σ(x)ε is the code μ(x) plus Gaussian noise, and the KL term is the
rate — E_x KL(q(z|x) ‖ p(z)) = I(x; z) + KL(q(z) ‖ p(z)) ≥ I(x; z) with q(z) the aggregate
posterior, a variational upper bound on the information the code carries. So
``recon + β·KL`` is the information-bottleneck Lagrangian min E[−log p(x|z)] + β·I(x; z) with
its mutual information replaced by that bound: the μ² part pulls the codes towards the origin
and the σ² − log σ² part keeps the noise from vanishing (without it the VAE is a plain
autoencoder with σ → 0). β = 1 is the true ELBO; β < 1 lets more information through (sharper
reconstructions, a prior that no longer matches the codes, worse samples); β > 1 compresses
harder (the β-VAE: smoother, more disentangled latents, and at large β posterior collapse —
the KL reaches 0 and z carries nothing). Reported bounds (``nelbo``, the importance-sampled
likelihood of ``likelihood``) always use β = 1.

Data: images [B, C, H, W] (or vectors [B, D]) as the data sets hold them. Discrete images are
integer levels 0..n_levels−1 (the digits: uint8 0..16, n_levels = 17); the encoder sees them
divided by n_levels − 1, i.e. in [0, 1] (the Bernoulli decoder takes these [0, 1] values as its
targets; the categorical decoder models the levels themselves).

Subclasses change the latent space by overriding the latent hooks (``_encoder_outputs``,
``_posterior``, ``kl``, ``prior_log_prob``, ``sample_prior``, ``latent_grid``); the networks, the
decoder likelihood, the loss and the importance-sampling terms are shared.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.distributions import Distribution

from kexue import _random
from kexue.distributions import DiagonalNormal
from kexue.models.vae.observations import make_observation
from kexue.ops._common import can_check_values

Tensor = torch.Tensor
# Latent-map grid: the prior's quantiles from LATENT_MAP_EDGE to 1 − LATENT_MAP_EDGE (the
# outer 5% tails hold few codes and decode to little of interest).
LATENT_MAP_EDGE = 0.05


def mlp(n_in: int, hidden: int, layers: int, n_out: int) -> nn.Sequential:
    """``layers`` hidden Linear+SiLU layers of width ``hidden``, then a Linear to ``n_out``."""
    mods, width = [], n_in
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    mods.append(nn.Linear(width, n_out))
    return nn.Sequential(*mods)


def _positive_int(name: str, v, who: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{who}: {name} must be an integer >= {minimum}, got {v!r}")
    return v


class VAE(nn.Module):
    """Gaussian VAE on data of shape ``event_shape`` (``n_levels`` levels if discrete).

    ``latent_dim`` latent dimensions; encoder and decoder MLPs with ``layers`` hidden layers of
    width ``hidden``; ``decoder`` in ``observations.OBSERVATIONS`` (None: categorical for
    discrete data, Gaussian otherwise), ``sigma`` the Gaussian decoder's fixed σ (None:
    learned); ``beta`` the weight of the KL term in the training loss.

    Options:
    latent_dim: number of latent dimensions (2 allows the latent map)
    hidden: width of the encoder's and decoder's hidden layers
    layers: number of hidden Linear+SiLU layers in the encoder and in the decoder (0: linear maps)
    decoder: 'categorical', 'bernoulli' or 'gaussian' decoder likelihood (None: categorical for
      discrete data, gaussian otherwise)
    sigma: the Gaussian decoder's fixed std, in [0, 1]-scaled pixel units for discrete data
      (None: one learned std; only with decoder 'gaussian')
    beta: weight of the KL term in the training loss, >= 0 (1: the true ELBO; reported bounds
      always use 1)
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, *, latent_dim: int = 16,
                 hidden: int = 256, layers: int = 2, decoder: Optional[str] = None, sigma: Optional[float] = None,
                 beta: float = 1.0):
        super().__init__()
        who = type(self).__name__
        self.event_shape = tuple(int(s) for s in event_shape)
        if not self.event_shape or any(s < 1 for s in self.event_shape):
            raise ValueError(f"{who}: event_shape must be a non-empty shape of positive sizes, got {list(event_shape)}")
        if n_levels is not None:
            _positive_int("n_levels", n_levels, who, minimum=2)
        self.n_levels = n_levels
        self.latent_dim = _positive_int("latent_dim", latent_dim, who, minimum=self._min_latent_dim())
        _positive_int("hidden", hidden, who)
        _positive_int("layers", layers, who, minimum=0)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
            raise ValueError(f"{who}: beta must be a finite number >= 0, got {beta!r}")
        self.beta = float(beta)
        self.dim = math.prod(self.event_shape)
        self.observation = make_observation(decoder, self.dim, n_levels, sigma)
        self.encoder = mlp(self.dim, hidden, layers, self._encoder_outputs())
        self.decoder = mlp(self.latent_dim, hidden, layers, self.observation.param_size)

    # --- latent hooks (the Gaussian latent; subclasses override) --------------------------------
    def _min_latent_dim(self) -> int:
        return 1

    def _encoder_outputs(self) -> int:
        return 2 * self.latent_dim

    def _posterior(self, h: Tensor) -> Distribution:
        """q(z|x) from the encoder's output h [B, _encoder_outputs()]."""
        mean, log_var = h.chunk(2, dim=-1)
        return DiagonalNormal(mean, log_var, validate_args=False)

    def kl(self, posterior: Distribution) -> Tensor:
        """KL(q(z|x) ‖ p(z)) per example, [B], in closed form."""
        return posterior.kl_to_standard_normal()

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log p(z) over the last dimension."""
        return -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1)

    def sample_prior(self, n: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:
        """n latents from the prior, [n, latent_dim]; ``temperature`` scales the prior's std."""
        p = self._anchor()
        return temperature * _random.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype)

    def latent_grid(self, n: int) -> Tensor:
        """An n×n grid [n·n, 2] over a 2-D latent, row by row: the prior's quantiles
        LATENT_MAP_EDGE..1−LATENT_MAP_EDGE on each axis (the usual VAE latent map)."""
        self._require_2d_latent()
        p = self._anchor()
        q = torch.special.ndtri(torch.linspace(LATENT_MAP_EDGE, 1 - LATENT_MAP_EDGE, n, device=p.device,
                                               dtype=p.dtype))
        rows, cols = torch.meshgrid(q.flip(0), q, indexing="ij")  # top row = largest z₂
        return torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1)

    # --- shared machinery ---------------------------------------------------------------------
    def _anchor(self) -> Tensor:
        """A parameter, for the device and dtype of new tensors."""
        return self.decoder[-1].weight

    def _require_2d_latent(self) -> None:
        if self.latent_dim != 2:
            raise ValueError(f"{type(self).__name__}: a latent map needs latent_dim=2, this model has {self.latent_dim}")

    def _check_batch(self, x: Tensor) -> None:
        who = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{who}: expected a tensor batch [B, {', '.join(map(str, self.event_shape))}], "
                            f"got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.event_shape or x.dim() != len(self.event_shape) + 1:
            raise ValueError(f"{who}: expected a batch of shape [B, {', '.join(map(str, self.event_shape))}], "
                             f"got {list(x.shape)}")
        if self.n_levels is None and not x.dtype.is_floating_point:
            raise TypeError(f"{who}: continuous data must be floating, got {x.dtype}")
        # Value checks read the data back, which is free on the CPU only: skipped for device tensors.
        if can_check_values(x):
            if self.n_levels is not None:
                if x.dtype.is_floating_point and not bool((x == x.round()).all()):
                    raise ValueError(f"{who}: discrete data must hold integer levels 0..{self.n_levels - 1}")
                lo, hi = x.min().item(), x.max().item()
                if lo < 0 or hi > self.n_levels - 1:
                    raise ValueError(f"{who}: discrete data must hold levels 0..{self.n_levels - 1}, found {lo}..{hi}")
            elif not bool(torch.isfinite(x).all()):
                raise ValueError(f"{who}: the batch contains NaN or inf values")

    def encode(self, x: Tensor) -> Distribution:
        """The posterior q(z|x) of a batch (``.mean`` / ``.loc`` for the codes)."""
        self._check_batch(x)
        p = self._anchor()
        return self._posterior(self.encoder(self.observation.unit(x).to(p.dtype)))

    def decoder_params(self, z: Tensor) -> Tensor:
        """The decoder network's output for latents z [B, latent_dim]: p(x|z)'s parameters."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"{type(self).__name__}: latents must have shape [B, {self.latent_dim}], got {list(z.shape)}")
        return self.decoder(z)

    def decode(self, z: Tensor) -> Tensor:
        """E[x|z] in data units (levels for discrete data, not rounded), [B, *event_shape]."""
        return self.observation.mean(self.decoder_params(z)).view(z.shape[0], *self.event_shape)

    def negative_elbo(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """Per-example terms [B] in nats: ``recon`` = −log p(x|z) at one z ~ q(z|x), ``kl`` the
        closed-form KL(q(z|x) ‖ p(z)); recon + kl is a one-sample estimate of −ELBO."""
        posterior = self.encode(x)
        z = posterior.rsample(generator=generator)
        recon = -self.observation.log_prob(self.decoder_params(z), x)
        return {"recon": recon, "kl": self.kl(posterior)}

    def loss(self, x: Tensor) -> Dict[str, Tensor]:
        """Training objective mean(recon + β·KL) (nats per example) and the metrics: ``recon``,
        ``kl``, ``nelbo`` (= recon + KL, the β = 1 bound), and ``bpd`` (nelbo in bits per
        dimension) when the decoder is a likelihood of the discrete data."""
        t = self.negative_elbo(x)
        nelbo = t["recon"] + t["kl"]
        out = {"loss": (t["recon"] + self.beta * t["kl"]).mean(), "recon": t["recon"].mean().detach(),
               "kl": t["kl"].mean().detach(), "nelbo": nelbo.mean().detach()}
        if self.observation.discrete_likelihood:
            out["bpd"] = out["nelbo"] / (self.dim * math.log(2))
        return out

    def importance_terms(self, x: Tensor, k: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """log p(x|z_j) + log p(z_j) − log q(z_j|x) for z_1..z_k ~ q(z|x): [k, B] (the protocol of
        ``kexue.models.vae.likelihood``)."""
        k = _positive_int("k", k, f"{type(self).__name__}.importance_terms")
        posterior = self.encode(x)
        z = posterior.rsample((k,), generator=generator)  # [k, B, L]
        log_q = posterior.log_prob(z)
        log_prior = self.prior_log_prob(z)
        params = self.decoder_params(z.flatten(0, 1))
        xk = x.unsqueeze(0).expand(k, *x.shape).flatten(0, 1)
        log_px = self.observation.log_prob(params, xk).view(k, x.shape[0])
        return log_px + log_prior - log_q

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None,
               decoder_noise: bool = False) -> Tensor:
        """n images [n, *event_shape] in data units from z ~ prior: the decoder's mean E[x|z]
        (rounded to the nearest level for discrete data), or with ``decoder_noise`` a draw
        x ~ p(x|z) (grainy: the pixels are independent given z)."""
        n = _positive_int("n", n, f"{type(self).__name__}.sample", minimum=0)
        params = self.decoder_params(self.sample_prior(n, temperature, generator))
        if decoder_noise:
            x = self.observation.sample(params, generator)
        else:
            x = self.observation.mean(params)
            if self.n_levels is not None:
                x = x.round().clamp(0, self.n_levels - 1)
        return x.view(n, *self.event_shape)

    @torch.no_grad()
    def latent_map(self, n: int = 15) -> Tuple[Tensor, Tensor]:
        """Decoder means over an n×n grid of a 2-D latent: (images [n·n, *event_shape] in data
        units, latents [n·n, latent_dim]), row by row (see ``latent_grid``)."""
        n = _positive_int("n", n, f"{type(self).__name__}.latent_map")
        z = self.latent_grid(n)
        return self.decode(z), z


__all__ = ["LATENT_MAP_EDGE", "VAE", "mlp"]
