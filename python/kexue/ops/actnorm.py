"""ActNorm (Glow): per-channel ``y = (x + b)·e^{log_s}`` with log-det ``H·W·Σ log_s``.

``actnorm`` runs fused kernels (csrc/kexue/actnorm.h holds the math); ``reference_actnorm`` is
the same map in plain PyTorch. Fake kernels here; autograd in C++ (csrc/ops/actnorm.cpp), whose
backward is ``kexue::actnorm_backward``.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from kexue.ops import _checks as C
from kexue.ops._common import acc_dtype, empty_grad

Tensor = torch.Tensor


def actnorm(x: Tensor, bias: Tensor, log_scale: Tensor, *, reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """Per-channel affine over dim 1 of ``x`` ([B, C, ...]) with its log-determinant.

    Forward ``y = (x + bias)·exp(log_scale)``; reverse ``x = y·exp(−log_scale) − bias``.
    ``bias`` and ``log_scale`` are ``[C]`` and may stay fp32 while ``x`` is fp16/bf16.
    Returns ``(y, logdet)`` with ``logdet[B] = ±(spatial size)·Σ log_scale`` (fp32 for half x).
    """
    return torch.ops.kexue.actnorm(x, bias, log_scale, bool(reverse))


def _check_inputs(x, bias, log_scale, op):
    """csrc/ops/actnorm.cpp's check_inputs()."""
    C.device_supported(x, op)
    C.float_dtype(x, op, "x")
    C.check(x.dim() >= 2, op, "x must be [batch, channels, ...], got shape ", C.sizes(x))
    for p, name in ((bias, "bias"), (log_scale, "log_scale")):
        C.like(x, "x", p, op, name, same_dtype=False)
        C.float_dtype(p, op, name)
        C.check(p.dim() == 1 and p.shape[0] == x.shape[1], op, name, " must have shape [", x.shape[1],
                "] (the channels of x), got ", C.sizes(p))


@torch.library.register_fake("kexue::actnorm")
def _actnorm_fake(x, bias, log_scale, reverse):
    _check_inputs(x, bias, log_scale, "kexue.actnorm")
    return x.new_empty(x.shape), x.new_empty((x.shape[0],), dtype=acc_dtype(x.dtype))


@torch.library.register_fake("kexue::actnorm_backward")
def _actnorm_backward_fake(grad_out, grad_logdet, x, bias, log_scale, reverse, output_mask):
    op = "kexue.actnorm_backward"
    _check_inputs(x, bias, log_scale, op)
    C.output_and_logdet_grads(x, grad_out, grad_logdet, op)
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
