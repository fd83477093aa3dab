"""NVAE (Vahdat & Kautz 2020, "NVAE: A Deep Hierarchical Variational Autoencoder"; post 强大的NVAE),
small enough for the 8×8 digits on a CPU.

Hierarchy. A bottom-up encoder (residual cells, ``nvae_cells``) computes one feature map per
latent group; a top-down decoder visits the groups from the coarsest scale to the finest. Group
g has a prior ``p(z_g | z_<g) = N(μ_p, σ_p²)`` computed from the decoder state (the top group's
prior is N(0, I)) and a *residual-normal* posterior (paper eq. 2)

    q(z_g | z_<g, x) = N(μ_p + Δμ, (σ_p·Δσ)²),

whose (Δμ, log Δσ) come from the encoder feature combined with the decoder state, so that

    KL(q ‖ p) = ½ Σ ( Δμ²/σ_p² + Δσ² − log Δσ² − 1 )                    (``residual_normal_kl``)

depends on the prior only through σ_p: the posterior is learnt relative to the prior. Log-scales
(and means) pass through the paper's soft clamp ``5·tanh(·/5)``.

Likelihood. Each pixel of the digits is one of 17 levels (0..16), so the decoder outputs a
*categorical* distribution over the levels per pixel: the exact discrete likelihood, with no
dequantisation and no bin edges to tune (the paper uses a discretised logistic mixture for
8-bit colour images and a Bernoulli for binary MNIST; a categorical is the natural choice for a
handful of levels). Bounds are reported in bits per dimension of the discrete data.

Training objective per image:  −log p(x|z) + β(step)·Σ_g KL_g, plus λ·Σ_l σ_max(W_l):

- KL warm-up: β rises linearly from ``min_kl_coeff`` to 1 over the first ``warmup_steps``
  training steps (one ``loss`` call in training mode = one step). The step counter is a buffer,
  so it is saved in the state dict and a resumed run continues the schedule.
- spectral regularisation (paper eq. 3): the largest singular value of every convolution's
  weight, reshaped to [out, in·k·k], estimated by power iteration with persistent vectors
  (``kexue.ops.spectral_norm_power_iteration_grouped``, all layers in one call), smooths the
  decoder and bounds how fast the KL can change with the input.

Sampling draws each group from its prior with the standard deviation scaled by a temperature t
(``sample(n, temperature=t)``); t < 1 gives cleaner, less diverse samples, as in the paper.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from kexue import _random
from kexue.models.vae.nvae_cells import DecoderCell, DecoderCombiner, EncoderCell, EncoderCombiner
from kexue.ops import spectral_norm_power_iteration_grouped
from kexue.train.registry import class_builder, register_class
from kexue.ops._common import can_check_values

Tensor = torch.Tensor
LOG_2PI = math.log(2 * math.pi)
# The paper's soft clamp of means and log-scales, 5·tanh(x/5): keeps them in (−5, 5) smoothly.
SOFT_CLAMP = 5.0
# Power-iteration steps run once at construction, so the very first σ estimates are sensible.
SPECTRAL_INIT_ITERATIONS = 10
PIXEL_MODES = ("sample", "mode", "mean")


def soft_clamp(x: Tensor, bound: float = SOFT_CLAMP) -> Tensor:
    """``bound · tanh(x / bound)``."""
    return bound * torch.tanh(x / bound)


def residual_normal_kl(delta_mu: Tensor, log_delta_sigma: Tensor, log_sigma_p: Tensor) -> Tensor:
    """Elementwise KL(N(μ_p + Δμ, (σ_p Δσ)²) ‖ N(μ_p, σ_p²)) = ½(Δμ²/σ_p² + Δσ² − log Δσ² − 1)
    (NVAE eq. 2); it does not depend on μ_p."""
    return 0.5 * (delta_mu.square() * torch.exp(-2 * log_sigma_p) + torch.exp(2 * log_delta_sigma)
                  - 2 * log_delta_sigma - 1)


def _normal_log_density(standardized: Tensor, log_sigma: Tensor) -> Tensor:
    """log N(x; μ, σ²) summed per example, given (x − μ)/σ and log σ."""
    return (-0.5 * standardized.square() - log_sigma - 0.5 * LOG_2PI).flatten(1).sum(1)


def _split_params(t: Tensor) -> Tuple[Tensor, Tensor]:
    mu, log_sigma = t.chunk(2, dim=1)
    return soft_clamp(mu), soft_clamp(log_sigma)


class NVAE(nn.Module):
    """NVAE over discrete images [B, C, H, W] with ``n_levels`` values per pixel.

    ``groups_per_scale`` lists the latent groups per scale from the top (coarsest,
    resolution / 2^(scales−1)) to the bottom (full resolution); ``channels`` is the feature width
    at full resolution (doubled at each coarser scale) and ``latent_channels`` the channels of
    each group's z.

    Options:
    channels: feature channels at full resolution (doubled at each coarser scale)
    latent_channels: channels of each latent group's z
    groups_per_scale: latent groups per scale, coarsest first (JSON list; n scales need H and W
      divisible by 2^(n-1))
    cells_per_group: residual cells per latent group in the encoder and in the decoder
    expand: channel expansion factor of the decoder cells' depthwise 5x5 stage
    warmup_steps: training steps over which the KL weight rises linearly to 1 (0: no warm-up)
    min_kl_coeff: floor of the KL weight during the warm-up, in (0, 1]
    spectral_lambda: weight of the spectral regulariser (sum of the convolutions' largest
      singular values) in the training loss, >= 0 (0: off)
    power_iterations: power-iteration steps per training step for the spectral norms
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int], *, channels: int = 16,
                 latent_channels: int = 4, groups_per_scale: Sequence[int] = (2, 2), cells_per_group: int = 1,
                 expand: int = 3, warmup_steps: int = 1000, min_kl_coeff: float = 1e-4,
                 spectral_lambda: float = 1e-3, power_iterations: int = 1):
        super().__init__()
        shape = tuple(int(s) for s in event_shape)
        if len(shape) != 3:
            raise ValueError(f"NVAE: expects images [C, H, W], got event shape {list(shape)}")
        if isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2:
            raise ValueError(f"NVAE: needs discrete images (n_levels >= 2 values per pixel) for its categorical "
                             f"decoder, got n_levels={n_levels!r}")
        groups = list(groups_per_scale)
        if not groups or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in groups):
            raise ValueError(f"NVAE: groups_per_scale must list at least one scale, each with >= 1 group, "
                             f"got {list(groups_per_scale)}")
        factor = 2 ** (len(groups) - 1)
        if shape[1] % factor or shape[2] % factor:
            raise ValueError(f"NVAE: {len(groups)} scales need H and W divisible by {factor}, "
                             f"got {shape[1]}×{shape[2]}")
        for name, v in (("channels", channels), ("latent_channels", latent_channels),
                        ("cells_per_group", cells_per_group), ("expand", expand),
                        ("power_iterations", power_iterations)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"NVAE: {name} must be a positive integer, got {v!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"NVAE: warmup_steps must be a non-negative integer, got {warmup_steps!r}")
        if not 0 < min_kl_coeff <= 1:
            raise ValueError(f"NVAE: min_kl_coeff must lie in (0, 1], got {min_kl_coeff!r}")
        if not spectral_lambda >= 0:
            raise ValueError(f"NVAE: spectral_lambda must be non-negative, got {spectral_lambda!r}")

        self.event_shape, self.n_levels = shape, n_levels
        self.dim = math.prod(shape)
        self.latent_channels = latent_channels
        self.warmup_steps, self.min_kl_coeff = warmup_steps, float(min_kl_coeff)
        self.spectral_lambda, self.power_iterations = float(spectral_lambda), power_iterations
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

        n_scales = len(groups)
        width = [channels * 2 ** (n_scales - 1 - s) for s in range(n_scales)]  # per scale, top first
        # Scale of every group in top-down order.
        self.group_scale: List[int] = [s for s in range(n_scales) for _ in range(groups[s])]
        n_groups = len(self.group_scale)
        c_img = shape[0]

        # ---- bottom-up encoder: cells per group, from the bottom scale up -------------------
        self.stem = nn.Conv2d(c_img, width[-1], 3, padding=1)
        self.enc_groups = nn.ModuleList(
            nn.Sequential(*(EncoderCell(width[s], width[s]) for _ in range(cells_per_group)))
            for s in reversed(self.group_scale))
        self.enc_down = nn.ModuleList(EncoderCell(width[s], width[s - 1], stride=2)
                                      for s in range(n_scales - 1, 0, -1))

        # ---- top-down decoder -----------------------------------------------------------------
        top = (width[0], shape[1] // factor, shape[2] // factor)
        self.h0 = nn.Parameter(torch.rand(top))
        self.dec_groups = nn.ModuleList()  # the cells before group g, for g >= 1
        for g in range(1, n_groups):
            s_prev, s = self.group_scale[g - 1], self.group_scale[g]
            cells = [DecoderCell(width[s_prev], width[s], upsample=s != s_prev, expand=expand)]
            cells += [DecoderCell(width[s], width[s], expand=expand) for _ in range(cells_per_group - 1)]
            self.dec_groups.append(nn.Sequential(*cells))
        self.prior_heads = nn.ModuleList(
            nn.Sequential(nn.ELU(), nn.Conv2d(width[s], 2 * latent_channels, 1)) for s in self.group_scale[1:])
        self.posterior_heads = nn.ModuleList(
            nn.Conv2d(width[s], 2 * latent_channels, 3, padding=1) for s in self.group_scale)
        self.enc_combiners = nn.ModuleList(EncoderCombiner(width[s]) for s in self.group_scale)
        self.dec_combiners = nn.ModuleList(DecoderCombiner(width[s], latent_channels) for s in self.group_scale)
        # Every scale has a group, so the last group is at full resolution already.
        self.post_process = nn.Sequential(*(DecoderCell(width[-1], width[-1], expand=expand)
                                            for _ in range(cells_per_group)))
        self.to_logits = nn.Sequential(nn.ELU(), nn.Conv2d(width[-1], n_levels * c_img, 3, padding=1))

        # ---- persistent power-iteration vectors of every convolution --------------------------
        for conv in self._convs():
            out_features, in_features = conv.weight.flatten(1).shape
            conv.register_buffer("sr_u", F.normalize(torch.randn(out_features), dim=0))
            conv.register_buffer("sr_v", F.normalize(torch.randn(in_features), dim=0))
        self.spectral_norms(SPECTRAL_INIT_ITERATIONS)

    # ---- pieces ------------------------------------------------------------------------------

    def _convs(self) -> List[nn.Conv2d]:
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]

    def spectral_norms(self, n_power_iterations: Optional[int] = None) -> Tensor:
        """σ_max of every convolution weight ([out, in·k·k]), a tensor [n_convs].

        First ``n_power_iterations`` (default ``power_iterations``) power-iteration steps update
        the persistent vectors u, v (no gradient); then ``σ = uᵀ W v``, differentiable in W
        (∂σ/∂W = u vᵀ, the gradient of the true σ_max once u, v have converged)."""
        convs = self._convs()
        mats = [conv.weight.flatten(1) for conv in convs]
        with torch.no_grad():
            spectral_norm_power_iteration_grouped([w.detach() for w in mats], [c.sr_u for c in convs],
                                                  [c.sr_v for c in convs],
                                                  n_power_iterations or self.power_iterations)
        return torch.stack([torch.dot(c.sr_u, w @ c.sr_v) for c, w in zip(convs, mats)])

    def kl_coefficient(self) -> Tensor:
        """β of the KL warm-up at the current step: ``clamp(step / warmup_steps, min_kl_coeff, 1)``
        (a 0-d tensor; 1 when warmup_steps is 0)."""
        if self.warmup_steps == 0:
            return torch.ones((), device=self.steps_done.device)
        return (self.steps_done.float() / self.warmup_steps).clamp(self.min_kl_coeff, 1.0)

    def _levels(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dtype.is_complex or x.dtype == torch.bool:
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"NVAE: expected a tensor of pixel levels, got {got}")
        if tuple(x.shape[1:]) != self.event_shape or x.dim() != 4:
            raise ValueError(f"NVAE: expected images [B, {', '.join(map(str, self.event_shape))}], "
                             f"got {list(x.shape)}")
        # On the CPU bad levels are a clear error here; on CUDA the check would cost a host sync
        # per step, and cross_entropy's own device-side check catches out-of-range targets.
        if can_check_values(x):
            if x.dtype.is_floating_point and not bool((x == x.round()).all()):
                raise ValueError("NVAE: pixel values must be integer levels (got non-integer values or NaN)")
            if bool(((x < 0) | (x > self.n_levels - 1)).any()):
                raise ValueError(f"NVAE: pixel levels must lie in [0, {self.n_levels - 1}], got values in "
                                 f"[{float(x.min())}, {float(x.max())}]")
        return x.long()

    def _encode(self, levels: Tensor) -> List[Tensor]:
        """Encoder features, one per group, in top-down order."""
        s = self.stem(levels.to(self.h0.dtype) * (2.0 / (self.n_levels - 1)) - 1.0)
        bottom_up = self.group_scale[::-1]
        last_scale = len(self.enc_down)
        feats = []
        for i, scale in enumerate(bottom_up):
            s = self.enc_groups[i](s)
            feats.append(s)
            if i + 1 < len(bottom_up) and bottom_up[i + 1] != scale:
                s = self.enc_down[last_scale - scale](s)  # enc_down[j] leaves scale last_scale - j
        return feats[::-1]

    def _top_down(self, feats: Optional[List[Tensor]], n: int, generator: Optional[torch.Generator],
                  temperature: float = 1.0) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Logits [n, n_levels, C, H, W] with z from the posterior (``feats`` given) or from the
        prior at ``temperature`` (``feats`` None), and per-example terms of the posterior pass:
        "kl_groups" [n, G] (analytic) and "log_p_minus_log_q" [n] (at the sampled z)."""
        h = self.h0.unsqueeze(0).expand(n, *self.h0.shape)
        kls, log_ratio = [], h.new_zeros(n)
        for g in range(len(self.group_scale)):
            if g > 0:
                h = self.dec_groups[g - 1](h)
                mu_p, log_sigma_p = _split_params(self.prior_heads[g - 1](h))
            else:
                mu_p = log_sigma_p = h.new_zeros(n, self.latent_channels, *h.shape[2:])
            eps = _random.randn(mu_p.shape, generator=generator, device=h.device, dtype=h.dtype)
            sigma_p = torch.exp(log_sigma_p)
            if feats is None:
                z = mu_p + temperature * sigma_p * eps
            else:
                d_mu, log_d_sigma = _split_params(self.posterior_heads[g](self.enc_combiners[g](feats[g], h)))
                z = mu_p + d_mu + sigma_p * torch.exp(log_d_sigma) * eps
                kls.append(residual_normal_kl(d_mu, log_d_sigma, log_sigma_p).flatten(1).sum(1))
                log_ratio = (log_ratio + _normal_log_density((z - mu_p) / sigma_p, log_sigma_p)
                             - _normal_log_density(eps, log_sigma_p + log_d_sigma))
            h = self.dec_combiners[g](h, z)
        logits = self.to_logits(self.post_process(h)).view(n, self.n_levels, *self.event_shape)
        terms = {"kl_groups": torch.stack(kls, dim=1), "log_p_minus_log_q": log_ratio} if feats is not None else {}
        return logits, terms

    # ---- objective ---------------------------------------------------------------------------

    def negative_elbo(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """Per-image terms in nats at one posterior sample: "recon" = −log p(x|z), "kl" (sum of
        the groups' analytic KLs; "kl_groups" [B, G]), "bound" = recon + kl ≥ −log p(x), and
        "log_p_minus_log_q" = log p(z) − log q(z|x) of the sample."""
        levels = self._levels(x)
        logits, terms = self._top_down(self._encode(levels), levels.shape[0], generator)
        recon = F.cross_entropy(logits, levels, reduction="none").flatten(1).sum(1)
        kl = terms["kl_groups"].sum(1)
        return {"recon": recon, "kl": kl, "bound": recon + kl, **terms}

    def loss(self, x: Tensor) -> Dict[str, Tensor]:
        """The training objective (bits per dimension, KL weighted by the warm-up β, plus
        λ·Σσ_max in training mode) as "loss", with the true bound "bpd" and its parts. In
        training mode each call advances the warm-up step counter."""
        t = self.negative_elbo(x)
        beta = self.kl_coefficient()
        nats_per_bit = self.dim * math.log(2)
        loss = (t["recon"] + beta * t["kl"]).mean() / nats_per_bit
        out = {"bpd": t["bound"].mean().detach() / nats_per_bit, "recon": t["recon"].mean().detach(),
               "kl": t["kl"].mean().detach(), "kl_coeff": beta.detach()}
        if self.training:
            if self.spectral_lambda > 0:
                sigma_sum = self.spectral_norms().sum()
                loss = loss + self.spectral_lambda * sigma_sum
                out["spectral"] = sigma_sum.detach()
            with torch.no_grad():
                self.steps_done += 1
        return {"loss": loss, **out}

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> Dict[str, float]:
        """The true negative ELBO (β = 1, no regulariser) in bits per dimension ("loss" and
        "bpd") and its parts in nats per image; the step counter does not move."""
        t = self.negative_elbo(x)
        bpd = t["bound"].mean() / (self.dim * math.log(2))
        return {"loss": float(bpd), "bpd": float(bpd), "recon": float(t["recon"].mean()),
                "kl": float(t["kl"].mean())}

    @torch.no_grad()
    def importance_terms(self, x: Tensor, k: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """``log p(x|z) + log p(z) − log q(z|x)`` at k posterior samples per image, [k, B]
        (z is the whole hierarchy); ``logsumexp(·, 0) − log k`` is the importance-sampled
        lower bound on log p(x) (IWAE), tight as k → ∞."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"NVAE.importance_terms: k must be a positive integer, got {k!r}")
        levels = self._levels(x)
        b = levels.shape[0]
        rep = levels.repeat(k, *([1] * (levels.dim() - 1)))
        logits, terms = self._top_down(self._encode(rep), rep.shape[0], generator)
        log_px = -F.cross_entropy(logits, rep, reduction="none").flatten(1).sum(1)
        return (log_px + terms["log_p_minus_log_q"]).view(k, b)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None,
               pixels: str = "sample") -> Tensor:
        """``n`` images [n, C, H, W] of float levels 0..n_levels−1, every group drawn from its
        prior with standard deviation × ``temperature``; ``pixels`` chooses how the categorical
        decoder gives a pixel: a draw ("sample"), its most likely level ("mode"), or its mean
        level ("mean", not an integer)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"NVAE.sample: n must be a non-negative integer, got {n!r}")
        if not temperature >= 0:
            raise ValueError(f"NVAE.sample: temperature must be non-negative, got {temperature!r}")
        if pixels not in PIXEL_MODES:
            raise ValueError(f"NVAE.sample: pixels must be one of {PIXEL_MODES}, got {pixels!r}")
        logits, _ = self._top_down(None, n, generator, temperature)
        if pixels == "mode":
            return logits.argmax(dim=1).to(self.h0.dtype)
        probs = torch.softmax(logits.float(), dim=1)
        if pixels == "mean":
            levels = torch.arange(self.n_levels, device=probs.device, dtype=probs.dtype)
            return torch.einsum("nl...,l->n...", probs, levels).to(self.h0.dtype)
        flat = probs.movedim(1, -1).reshape(-1, self.n_levels)
        if flat.shape[0] == 0:
            return logits.new_zeros(n, *self.event_shape)
        draws = torch.multinomial(flat, 1, generator=generator)
        return draws.view(n, *self.event_shape).to(self.h0.dtype)


build_nvae = class_builder(NVAE)

register_class("nvae", NVAE, default_data="digits", steps=450, batch_size=64, defaults=dict(warmup_steps=150),
               description="NVAE: hierarchical residual-normal latents, residual cells with SE, KL warm-up, "
                           "spectral regularisation, temperature sampling")

__all__ = ["NVAE", "build_nvae", "residual_normal_kl", "soft_clamp"]
