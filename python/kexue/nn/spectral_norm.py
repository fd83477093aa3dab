"""Spectral normalisation (Miyato et al. 2018; post 深度学习中的Lipschitz约束) as a drop-in for
``torch.nn.utils.parametrizations.spectral_norm``, plus the Yoshida–Miyato spectral-norm
regulariser and the WGAN-GP gradient penalty: the three ways the post constrains Lipschitz."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from kexue.ops import spectral_norm_power_iteration, spectral_norm_power_iteration_grouped, spectral_normalize

Tensor = torch.Tensor


class SpectralNorm(nn.Module):
    """The parametrization: ``W / σ`` (``coeff=None``, torch's behaviour) or the soft bound
    ``W / max(1, σ/coeff)`` (i-ResNet). Buffers ``_u`` and ``_v`` have torch's names and shapes,
    so state dicts move between the two implementations.

    ``input_shape`` (convolutions): normalise by the true operator norm of the convolution on
    inputs of that shape (power iteration with conv / conv_transpose), not by the norm of the
    reshaped kernel. ``sync_ddp``: average u, v over the ranks after each update.
    """

    def __init__(self, weight: Tensor, n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12,
                 coeff: Optional[float] = None, conv: Optional[dict] = None, sync_ddp: bool = False):
        super().__init__()
        if n_power_iterations < 1:
            raise ValueError(f"spectral_norm: n_power_iterations must be >= 1, got {n_power_iterations}")
        if coeff is not None and not coeff > 0:
            raise ValueError(f"spectral_norm: coeff must be positive, got {coeff}")
        ndim = weight.ndim
        self.dim = dim if dim >= 0 else dim + ndim
        self.eps, self.n_power_iterations, self.coeff = eps, n_power_iterations, coeff
        self.conv, self.sync_ddp = conv, sync_ddp
        if ndim > 1:
            with torch.no_grad():
                if conv is None:
                    mat = self._matrix(weight)
                    h, w = mat.shape
                else:  # u, v live flattened; the shapes are kept for the convolutions
                    h, w = math.prod(conv["output_shape"]), math.prod(conv["input_shape"])
                u = F.normalize(weight.new_empty(h).normal_(0, 1), dim=0, eps=eps)
                v = F.normalize(weight.new_empty(w).normal_(0, 1), dim=0, eps=eps)
                self.register_buffer("_u", u)
                self.register_buffer("_v", v)
                self._power_method(weight, 15)

    def _matrix(self, weight: Tensor) -> Tensor:
        if self.dim != 0:
            weight = weight.movedim(self.dim, 0)
        return weight.flatten(1)

    def _conv(self, x: Tensor, weight: Tensor, transpose: bool = False) -> Tensor:
        c = self.conv
        x = x.view(1, *(c["output_shape"] if transpose else c["input_shape"]))
        if transpose:
            out_pad = [i - ((o - 1) * s - 2 * p + d * (k - 1) + 1) for i, o, s, p, d, k in zip(
                c["input_shape"][1:], c["output_shape"][1:], c["stride"], c["padding"], c["dilation"], weight.shape[2:])]
            return F.conv_transpose2d(x, weight, stride=c["stride"], padding=c["padding"], dilation=c["dilation"],
                                      groups=c["groups"], output_padding=out_pad).flatten()
        return F.conv2d(x, weight, stride=c["stride"], padding=c["padding"], dilation=c["dilation"],
                        groups=c["groups"]).flatten()

    @torch.no_grad()
    def _power_method(self, weight: Tensor, n: int) -> None:
        if self.conv is None:
            spectral_norm_power_iteration(self._matrix(weight.detach()), self._u, self._v, n, self.eps)
        else:
            for _ in range(n):
                self._u.copy_(F.normalize(self._conv(self._v, weight), dim=0, eps=self.eps))
                self._v.copy_(F.normalize(self._conv(self._u, weight, transpose=True), dim=0, eps=self.eps))
        if self.sync_ddp and dist.is_available() and dist.is_initialized():
            for buf in (self._u, self._v):
                dist.all_reduce(buf)
                buf.copy_(F.normalize(buf, dim=0, eps=self.eps))

    def forward(self, weight: Tensor) -> Tensor:
        """The normalised weight, shaped like ``weight``: ``W/σ`` or ``W/max(1, σ/coeff)``, σ the power-
        iteration estimate of the largest singular value (or of the convolution's operator norm);
        in training it first runs ``n_power_iterations`` steps, updating ``_u``/``_v``. 1-D weights
        are L2-normalised."""
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        if self.training:
            self._power_method(weight, self.n_power_iterations)
        u = self._u.clone(memory_format=torch.contiguous_format)
        v = self._v.clone(memory_format=torch.contiguous_format)
        if self.conv is not None:
            sigma = torch.dot(u, self._conv(v, weight))
            factor = sigma if self.coeff is None else torch.clamp(sigma / self.coeff, min=1.0)
            return weight / factor
        mat = self._matrix(weight)
        w_sn, _ = spectral_normalize(mat, u, v, coeff=1.0 if self.coeff is None else self.coeff, n_iter=1,
                                     training=False, mode="exact" if self.coeff is None else "soft")
        w_sn = w_sn.view(weight.movedim(self.dim, 0).shape)
        return w_sn.movedim(0, self.dim) if self.dim != 0 else w_sn

    def right_inverse(self, value: Tensor) -> Tensor:
        return value


def spectral_norm(module: nn.Module, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12,
                  dim: Optional[int] = None, *, coeff: Optional[float] = None,
                  input_shape: Optional[Sequence[int]] = None, sync_ddp: bool = False) -> nn.Module:
    """Drop-in for ``torch.nn.utils.parametrizations.spectral_norm`` (same arguments, buffers and
    state-dict keys), plus ``coeff`` (soft bound ``W / max(1, σ/coeff)``), ``input_shape``
    ([C, H, W] of a Conv2d's input: use the convolution's true operator norm) and ``sync_ddp``."""
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"spectral_norm: module {type(module).__name__} has no parameter or buffer named {name!r}")
    if dim is None:
        dim = 1 if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
    conv = None
    if input_shape is not None:
        if not isinstance(module, nn.Conv2d):
            raise ValueError("spectral_norm: input_shape (operator norm) is supported for nn.Conv2d")
        with torch.no_grad():
            out = module._conv_forward(torch.zeros(1, *input_shape, dtype=weight.dtype, device=weight.device),
                                       weight, None)
        conv = {"input_shape": tuple(input_shape), "output_shape": tuple(out.shape[1:]), "stride": module.stride,
                "padding": module.padding, "dilation": module.dilation, "groups": module.groups}
    sn = SpectralNorm(weight, n_power_iterations, dim, eps, coeff=coeff, conv=conv, sync_ddp=sync_ddp)
    parametrize.register_parametrization(module, name, sn)
    return module


def spectral_norm_regularizer(model: nn.Module, lam: float = 1.0, n_power_iterations: int = 1) -> Tensor:
    """``λ Σ_l σ(W_l)²`` over every Linear/Conv weight of ``model`` (Yoshida & Miyato 2017), with
    all power iterations in one grouped call. u, v persist as non-persistent buffers on each
    layer (``_sr_u``, ``_sr_v``) so each call continues the iteration; σ is differentiable in W
    (∂σ/∂W = u vᵀ)."""
    layers = [m for m in model.modules()
              if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and isinstance(m.weight, Tensor)]
    if not layers:
        raise ValueError("spectral_norm_regularizer: the model has no Linear or Conv layers")
    mats = [m.weight.flatten(1) for m in layers]
    for m, w in zip(layers, mats):
        if getattr(m, "_sr_u", None) is None or m._sr_u.shape[0] != w.shape[0]:
            m.register_buffer("_sr_u", F.normalize(torch.randn(w.shape[0], dtype=w.dtype, device=w.device), dim=0),
                              persistent=False)
            m.register_buffer("_sr_v", F.normalize(torch.randn(w.shape[1], dtype=w.dtype, device=w.device), dim=0),
                              persistent=False)
    with torch.no_grad():
        spectral_norm_power_iteration_grouped([w.detach() for w in mats], [m._sr_u for m in layers],
                                              [m._sr_v for m in layers], n_power_iterations)
    sigmas = torch.stack([torch.dot(m._sr_u, w @ m._sr_v) for m, w in zip(layers, mats)])
    return lam * sigmas.square().sum()


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, lam: float = 10.0, target: float = 1.0) -> Tensor:
    """WGAN-GP: ``λ E[(‖∇_x̂ D(x̂)‖ − target)²]`` at random interpolates of real and fake samples."""
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real {list(real.shape)} and fake {list(fake.shape)} differ in shape")
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    x = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return lam * (grad.flatten(1).norm(dim=1) - target).square().mean()
