"""ActNorm (Glow): per-channel ``y = (x + b)·e^{log_s}`` with log-det ``H·W·Σ log_s``.

``actnorm`` runs fused kernels (csrc/kexue/actnorm.h holds the math); ``reference_actnorm`` is
the same map in plain PyTorch. Fake kernels here; autograd in C++ (csrc/ops/actnorm.cpp), whose
backward is ``kexue::actnorm_backward``.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from kexue.ops._common import acc_dtype, empty_grad

Tensor = torch.Tensor


def actnorm(x: Tensor, bias: Tensor, log_scale: Tensor, *, reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """Per-channel affine over dim 1 of ``x`` ([B, C, ...]) with its log-determinant.

    Forward ``y = (x + bias)·exp(log_scale)``; reverse ``x = y·exp(−log_scale) − bias``.
    ``bias`` and ``log_scale`` are ``[C]`` and may stay fp32 while ``x`` is fp16/bf16.
    Returns ``(y, logdet)`` with ``logdet[B] = ±(spatial size)·Σ log_scale`` (fp32 for half x).
    """
    return torch.ops.kexue.actnorm(x, bias, log_scale, bool(reverse))


@torch.library.register_fake("kexue::actnorm")
def _actnorm_fake(x, bias, log_scale, reverse):
    torch._check(x.dim() >= 2, lambda: "kexue.actnorm: x must be [batch, channels, ...]")
    return x.new_empty(x.shape), x.new_empty((x.shape[0],), dtype=acc_dtype(x.dtype))


@torch.library.register_fake("kexue::actnorm_backward")
def _actnorm_backward_fake(grad_out, grad_logdet, x, bias, log_scale, reverse, output_mask):
    acc = acc_dtype(x.dtype)
    param = bias.new_empty(bias.shape, dtype=acc)
    return (
        empty_grad(x, output_mask[0]),
        empty_grad(param, output_mask[1]),
        empty_grad(param, output_mask[2]),
    )



def reference_actnorm(x: Tensor, bias: Tensor, log_scale: Tensor, *, reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """``actnorm`` written with plain torch ops."""
    acc = acc_dtype(x.dtype)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    b, ls = bias.to(acc).view(shape), log_scale.to(acc).view(shape)
    xa = x.to(acc)
    out = xa * torch.exp(-ls) - b if reverse else (xa + b) * torch.exp(ls)
    spatial = math.prod(x.shape[2:])
    ld = log_scale.to(acc).sum() * spatial
    logdet = (-ld if reverse else ld).expand(x.shape[0])
    return out.to(x.dtype), logdet
