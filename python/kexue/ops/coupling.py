"""Coupling layers (NICE, RealNVP, Glow): y = x·f(s) + t with its per-sample log-det.

``coupling`` runs a fused kernel (csrc/kexue/coupling.h holds the math) forward and backward;
``reference_coupling`` is the same map in plain PyTorch: the readable spec and the test oracle.
The fake kernels live here; the autograd kernel is registered in C++ (csrc/ops/coupling.cpp,
see csrc/ops/autograd.h for why) and calls ``kexue::coupling_backward``.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from kexue.ops import _checks as C
from kexue.ops._autocast import promote_under_autocast
from kexue.ops._common import acc_dtype, check_real, empty_grad

SCALES = ("exp", "sigmoid", "tanh", "none")
Tensor = torch.Tensor


def _check_args(scale: str, clamp: Optional[float]) -> float:
    if scale not in SCALES:
        raise ValueError(f"kexue.ops.coupling: scale must be one of {SCALES}, got {scale!r}")
    if scale == "tanh":
        return 1.0 if clamp is None else check_real(clamp, "clamp", "kexue.ops.coupling", positive=True)
    if clamp is not None:
        raise ValueError(
            f"kexue.ops.coupling: clamp only applies to scale='tanh' (log f = clamp·tanh(s/clamp)), "
            f"got clamp={clamp} with scale={scale!r}"
        )
    return 0.0


def coupling(
    x: Tensor,
    s: Optional[Tensor],
    t: Optional[Tensor],
    *,
    scale: str = "exp",
    reverse: bool = False,
    mask: Optional[Tensor] = None,
    clamp: Optional[float] = None,
) -> Tuple[Tensor, Tensor]:
    """Affine (or additive) coupling transform with its log-determinant.

    Forward: ``y = x·f(s) + t``; reverse: ``x = (y − t) / f(s)``. ``f`` by ``scale``:
    ``"exp"`` e^s (RealNVP), ``"sigmoid"`` sigmoid(s + 2) (Glow), ``"tanh"``
    e^{clamp·tanh(s/clamp)} (soft-bounded exp, clamp defaults to 1), ``"none"`` 1 (additive,
    NICE; pass ``s=None``). ``t=None`` means no shift.

    ``mask`` (broadcastable to x; nonzero = pass-through) copies those entries unchanged and
    leaves them out of the log-det: RealNVP's checkerboard and channel masks.

    Returns ``(y, logdet)``: ``y`` shaped like ``x``; ``logdet`` of shape ``[B]`` (sum over every
    non-batch dim, fp32 for fp16/bf16 inputs), negated for ``reverse=True``.
    """
    clamp_value = _check_args(scale, clamp)
    return torch.ops.kexue.coupling(x, s, t, mask, scale, bool(reverse), clamp_value)


def _check_operands(x, s, t, mask, scale, clamp):
    """csrc/ops/coupling.cpp's prepare(): every check of the forward and backward glue."""
    op = "kexue.coupling"
    C.check(scale in SCALES, op, "scale must be one of 'exp', 'sigmoid', 'tanh', 'none', got '", scale, "'")
    C.device_supported(x, op)
    C.float_dtype(x, op, "x")
    C.check(x.dim() >= 1, op, "x must have a batch dimension, got a 0-d tensor")
    C.check(C.finite(clamp), op, "clamp must be finite, got ", C.num(clamp))
    if scale == "tanh":
        C.check(C.finite(clamp) and clamp > 0, op, "clamp must be positive and finite for scale='tanh', got ",
                C.num(clamp))
    if scale == "none":
        C.check(s is None, op, "scale='none' (additive coupling) takes no s; pass s=None")
    else:
        C.check(s is not None, op, "scale='", scale, "' needs s; only scale='none' runs without it")
    for v, name in ((s, "s"), (t, "t")):
        if v is not None:
            C.like(x, "x", v, op, name)
            C.same_shape(x, "x", v, op, name)
    if mask is not None:
        C.check(mask.device == x.device, op, "mask must be on ", x.device, " like x, got ", mask.device)
        C.check(mask.dim() <= x.dim(), op, "mask ", C.sizes(mask), " has more dimensions than x ", C.sizes(x))
        for md, xd in zip(reversed(mask.shape), reversed(x.shape)):
            C.check(md == 1 or md == xd, op, "mask ", C.sizes(mask), " does not broadcast to x ", C.sizes(x))


@torch.library.register_fake("kexue::coupling")
def _coupling_fake(x, s, t, mask, scale, reverse, clamp):
    _check_operands(x, s, t, mask, scale, clamp)
    return x.new_empty(x.shape), x.new_empty((x.shape[0],), dtype=acc_dtype(x.dtype))


@torch.library.register_fake("kexue::coupling_backward")
def _coupling_backward_fake(grad_out, grad_logdet, x, s, t, mask, scale, reverse, clamp, output_mask):
    _check_operands(x, s, t, mask, scale, clamp)
    C.output_and_logdet_grads(x, grad_out, grad_logdet, "kexue.coupling_backward")
    return (
        empty_grad(x, output_mask[0]),
        empty_grad(x, output_mask[1] and s is not None),
        empty_grad(x, output_mask[2] and t is not None),
    )



def reference_coupling(
    x: Tensor,
    s: Optional[Tensor],
    t: Optional[Tensor],
    *,
    scale: str = "exp",
    reverse: bool = False,
    mask: Optional[Tensor] = None,
    clamp: Optional[float] = None,
) -> Tuple[Tensor, Tensor]:
    """``coupling`` written with plain torch ops (autograd does the backward)."""
    clamp = _check_args(scale, clamp)
    if scale == "exp":
        log_f = s
    elif scale == "sigmoid":
        log_f = F.logsigmoid(s + 2)
    elif scale == "tanh":
        log_f = clamp * torch.tanh(s / clamp)
    else:
        log_f = torch.zeros_like(x)
    shift = t if t is not None else torch.zeros_like(x)
    if reverse:
        out, ld = (x - shift) * torch.exp(-log_f), -log_f
    else:
        out, ld = x * torch.exp(log_f) + shift, log_f
    if mask is not None:
        keep = mask != 0
        out = torch.where(keep, x, out)
        ld = torch.where(keep, torch.zeros_like(ld), ld)
    logdet = ld.to(acc_dtype(x.dtype)).reshape(x.shape[0], math.prod(x.shape[1:])).sum(1)
    return out, logdet


promote_under_autocast("coupling", (0, 1, 2))
