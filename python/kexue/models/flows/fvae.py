"""f-VAE (Su & Wu 2018, arXiv 1809.05861; post f-VAEs：Glow与VAEs的联姻).

The posterior is a conditional flow of a standard normal: ``w = σ₁·u + E(x)``, ``z = F(w)``,
u ~ N(0, I), with E a deterministic encoder, F an unconditional Glow-like flow and σ₁ one
learned scalar, so ``q(z|x)`` has density ``N(u)·σ₁^−D·|det ∂F/∂w|^−1``. The decoder is a
Gaussian ``N(x; G(w), σ₂²)`` with G deterministic and σ₂ one learned scalar; the prior on z is
N(0, I). The latent has the size of the data (no bottleneck), as in the paper.

Negative ELBO per sample (nats), the training loss and the reported bound:
    ‖G(w) − x‖²/(2σ₂²) + D·log σ₂ + (D/2)·log 2π        (reconstruction)
  − [log N(F(w)) + log|det ∂F/∂w|]                       (−log prior of z, via the flow)
  + log N(u) − D·log σ₁                                  (log q(z|x))
On discrete pixels the dequantisation log-det (−D·log L) is added, giving a bound on the
discrete bits/dim. Sampling: z ~ N(0, T²·I), w = F⁻¹(z), x = G(w).

``posterior="gaussian"`` is the plain VAE with the same encoder/decoder (E outputs a mean and a
per-dimension log-std, ``w = μ + σ⊙u``, prior N(0, I) on w, closed-form KL): the baseline the
paper compares against at equal size.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from kexue import _random
from kexue.models.flows.glow import glow_layers
from kexue.nn import Dequantize, Flow, Squeeze
from kexue.nn.conditioners import zero_init

Tensor = torch.Tensor
LOG_2PI = math.log(2 * math.pi)


class ResidualStack(nn.Module):
    """Squeeze → ``blocks`` × [x + conv1×1(ReLU(conv3×3(x)))] → unsqueeze: same shape out as in
    (the paper's E and G at the size of 8×8 digits)."""

    def __init__(self, shape: Sequence[int], hidden: int, blocks: int, out_factor: int = 1):
        super().__init__()
        self.squeeze = Squeeze()
        c = self.squeeze.output_shape(tuple(shape))[0]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden, 3, padding=1), nn.ReLU(), zero_init(nn.Conv2d(hidden, c, 1)))
            for _ in range(blocks)
        )
        self.head = nn.Conv2d(c, c * out_factor, 1) if out_factor > 1 else None
        if self.head is not None:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
            with torch.no_grad():  # start as [identity; 0]: mean = input, log-std = 0
                self.head.weight[:c, :, 0, 0].copy_(torch.eye(c))

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.squeeze(x)
        for block in self.blocks:
            h = h + block(h)
        if self.head is not None:
            h = self.head(h)
        return self.squeeze.inverse(h)[0]


class FVAE(nn.Module):
    """f-VAE on images [C, H, W] (``n_levels`` levels if discrete: dequantised first); see the
    module docstring for the model and its bound. ``posterior="gaussian"`` is the plain VAE
    baseline with the same encoder and decoder.

    Options:
    hidden: channels of the 3x3 convolutions in the encoder's and decoder's residual blocks,
      and of the posterior flow's coupling and split-prior networks
    blocks: residual blocks in the encoder E and in the decoder G (each)
    levels: levels of the posterior flow F, each starting with a squeeze, with a learned-prior
      split between levels (H and W must be divisible by 2^levels); unused with 'gaussian'
    depth: flow steps per level of F (ActNorm, channel reversal, additive coupling); unused
      with 'gaussian'
    posterior: 'flow' (f-VAE: sigma1*u + E(x) pushed through the flow F) or 'gaussian' (plain
      VAE with a per-dimension mean and std, the paper's baseline)
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, hidden: int = 64, blocks: int = 4,
                 levels: int = 2, depth: int = 4, posterior: str = "flow"):
        super().__init__()
        if posterior not in ("flow", "gaussian"):
            raise ValueError(f"FVAE: posterior must be 'flow' or 'gaussian', got {posterior!r}")
        shape = tuple(event_shape)
        if len(shape) != 3:
            raise ValueError(f"FVAE: expects images [C, H, W], got event shape {list(shape)}")
        self.event_shape, self.n_levels, self.posterior = shape, n_levels, posterior
        self.dim = math.prod(shape)
        self.dequantize = Dequantize(n_levels) if n_levels else None
        gaussian = posterior == "gaussian"
        self.encoder = ResidualStack(shape, hidden, blocks, out_factor=2 if gaussian else 1)
        self.decoder = ResidualStack(shape, hidden, blocks)
        self.log_sigma_dec = nn.Parameter(torch.zeros(()))
        if not gaussian:
            self.log_sigma_enc = nn.Parameter(torch.zeros(()))
            self.flow = Flow(glow_layers(shape, levels, depth, hidden, "additive", "reverse", squeeze=True), shape)

    def _data(self, x: Tensor):
        if x.dtype.is_floating_point and not torch.compiler.is_compiling() and not torch.isfinite(x).all():
            raise ValueError("FVAE: the batch contains NaN or inf values")
        if self.dequantize is None:
            return x, x.new_zeros(x.shape[0])
        return self.dequantize(x)

    def _reconstruction_nll(self, x: Tensor, w: Tensor) -> Tensor:
        err = (self.decoder(w) - x).flatten(1).square().sum(1)
        return err * torch.exp(-2 * self.log_sigma_dec) / 2 + self.dim * (self.log_sigma_dec + LOG_2PI / 2)

    def negative_elbo(self, x: Tensor) -> Dict[str, Tensor]:
        """Per-sample terms; "bound" is −ELBO of the (discrete, if dequantised) data in nats."""
        xc, deq_logdet = self._data(x)
        u = torch.randn_like(xc)
        if self.posterior == "flow":
            w = torch.exp(self.log_sigma_enc) * u + self.encoder(xc)
            log_q = -0.5 * (u.flatten(1).square().sum(1) + self.dim * LOG_2PI) - self.dim * self.log_sigma_enc
            kl = log_q - self.flow.log_prob(w)  # single-sample estimate of KL(q(z|x) ‖ p(z))
        else:
            h = self.encoder(xc)
            mean, log_std = h[:, : xc.shape[1]], h[:, xc.shape[1] :]
            w = mean + torch.exp(log_std) * u
            kl = 0.5 * (mean.square() + torch.exp(2 * log_std) - 1 - 2 * log_std).flatten(1).sum(1)
        recon = self._reconstruction_nll(xc, w)
        return {"bound": recon + kl - deq_logdet, "recon": recon, "kl": kl}

    def loss(self, x: Tensor) -> Dict[str, Tensor]:
        t = self.negative_elbo(x)
        bpd = t["bound"] / (self.dim * math.log(2))
        return {"loss": bpd.mean(), "bpd": bpd.mean().detach(), "recon": t["recon"].mean().detach(),
                "kl": t["kl"].mean().detach()}

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:
        p = self.log_sigma_dec
        z = temperature * _random.randn(n, self.dim, generator=generator, device=p.device, dtype=p.dtype)
        if self.posterior == "flow":
            w = self.flow.inverse(z)
        else:
            w = z.view(n, *self.event_shape)
        x = self.decoder(w)
        if self.n_levels:
            return torch.floor(x.clamp(0, 1 - 1e-6) * self.n_levels)
        return x
