"""Spectral normalisation (Miyato et al. 2018): σ(W) by power iteration with persistent vectors
u, v, and W / σ (GAN discriminators) or W / max(1, σ/c) (i-ResNet's soft constraint).

``spectral_norm_power_iteration`` updates u [out] and v [in] in place in torch's order
(u ← normalize(W v), v ← normalize(Wᵀ u)), one fused pass over W per iteration, and returns
σ = uᵀ W v, so that it matches ``torch.nn.utils.parametrizations.spectral_norm`` step for step;
``spectral_norm_power_iteration_grouped`` does it for many weights in one call.
``spectral_normalize_weight`` gives (W_sn, σ) with σ = uᵀ W v differentiable in W (u, v constant:
∂σ/∂W = u vᵀ) and ``spectral_normalize`` chains the two like the parametrization does.
``reference_*`` are the same in plain PyTorch: the readable spec and the test oracle. The fake
kernels live here; the autograd kernels are registered in C++ (csrc/ops/spectral_norm.cpp).
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from kexue.ops import _checks as C
from kexue.ops._common import acc_dtype, check_int, check_real

MODES = ("soft", "exact")
MAX_ITERATIONS = 100_000  # csrc/kexue/spectral_norm.h's kMaxIterations
Tensor = torch.Tensor


def _check_vectors(W: Tensor, u: Tensor, v: Tensor, op: str, idx: str = "") -> None:
    w, un, vn = f"W{idx}", f"u{idx}", f"v{idx}"
    if W.dim() != 2:
        raise ValueError(f"kexue.ops.{op}: {w} must be a 2-D matrix [out, in], got shape {tuple(W.shape)}; "
                         f"reshape conv kernels to [out_channels, -1] first")
    if u.dim() != 1 or u.shape[0] != W.shape[0]:
        raise ValueError(f"kexue.ops.{op}: {un} must have shape [{W.shape[0]}] (the rows of {w}), "
                         f"got {tuple(u.shape)}")
    if v.dim() != 1 or v.shape[0] != W.shape[1]:
        raise ValueError(f"kexue.ops.{op}: {vn} must have shape [{W.shape[1]}] (the columns of {w}), "
                         f"got {tuple(v.shape)}")


def _check_iter(n_iter: int, eps: float, op: str) -> Tuple[int, float]:
    return check_int(n_iter, "n_iter", f"kexue.ops.{op}", maximum=MAX_ITERATIONS), check_real(eps, "eps", f"kexue.ops.{op}", nonnegative=True)


def _check_mode(coeff: float, mode: str, op: str) -> Tuple[float, bool]:
    if mode not in MODES:
        raise ValueError(f"kexue.ops.{op}: mode must be one of {MODES}, got {mode!r}")
    return check_real(coeff, "coeff", f"kexue.ops.{op}", positive=True), mode == "exact"


def spectral_norm_power_iteration(W: Tensor, u: Tensor, v: Tensor, n_iter: int = 1,
                                  eps: float = 1e-12) -> Tensor:
    """``n_iter`` power-iteration steps for the largest singular value of ``W`` [out, in].

    Per step, in torch's order: ``u ← Wv / max(|Wv|, eps)``, then ``v ← Wᵀu / max(|Wᵀu|, eps)``;
    ``u`` [out] and ``v`` [in] (W's dtype and device) are updated in place. Returns
    ``σ = uᵀ W v`` for the updated vectors, a 0-d tensor (fp32 for fp16/bf16 W). σ is not
    differentiable (the iteration runs like torch's, under no_grad); use
    ``spectral_normalize_weight`` for a σ with a gradient.

    σ is computed without another pass over W: after the v update, ``uᵀWv = |Wᵀu|²/max(|Wᵀu|, eps)``,
    which is ``|Wᵀu|`` unless ``|Wᵀu| < eps`` (then it is the tiny ``|Wᵀu|²/eps``, still exactly
    uᵀWv for the stored vectors; an all-zero W gives u = v = 0 and σ = 0).
    """
    _check_vectors(W, u, v, "spectral_norm_power_iteration")
    n_iter, eps = _check_iter(n_iter, eps, "spectral_norm_power_iteration")
    return torch.ops.kexue.spectral_norm_power_iteration(W, u, v, n_iter, eps)


def spectral_norm_power_iteration_grouped(Ws: Sequence[Tensor], us: Sequence[Tensor],
                                          vs: Sequence[Tensor], n_iter: int = 1,
                                          eps: float = 1e-12) -> Tensor:
    """``spectral_norm_power_iteration`` for many weights (one dtype, one device) in one call:
    returns their σ as a tensor [L]; every ``us[i]``, ``vs[i]`` is updated in place. Results
    equal the single op's, weight by weight (bitwise on the CPU)."""
    Ws, us, vs = list(Ws), list(us), list(vs)
    op = "spectral_norm_power_iteration_grouped"
    if not len(Ws) == len(us) == len(vs):
        raise ValueError(f"kexue.ops.{op}: Ws, us and vs must have the same length, "
                         f"got {len(Ws)}, {len(us)} and {len(vs)}")
    for i, (W, u, v) in enumerate(zip(Ws, us, vs)):
        _check_vectors(W, u, v, op, f"s[{i}]")
    n_iter, eps = _check_iter(n_iter, eps, op)
    if not Ws:
        return torch.empty(0)
    return torch.ops.kexue.spectral_norm_power_iteration_grouped(Ws, us, vs, n_iter, eps)


def spectral_normalize_weight(W: Tensor, u: Tensor, v: Tensor, *, coeff: float = 1.0,
                              mode: str = "soft") -> Tuple[Tensor, Tensor]:
    """``(W_sn, σ)`` with ``σ = uᵀ W v`` (u, v held constant: ``∂σ/∂W = u vᵀ``) and
    ``W_sn = W / σ`` (``mode="exact"``) or ``W / max(1, σ/coeff)`` (``mode="soft"``).
    Differentiable in W, through both outputs; σ is fp32 for fp16/bf16 W."""
    _check_vectors(W, u, v, "spectral_normalize_weight")
    coeff, exact = _check_mode(coeff, mode, "spectral_normalize_weight")
    return torch.ops.kexue.spectral_normalize_weight(W, u, v, coeff, exact)


def spectral_normalize(W: Tensor, u: Tensor, v: Tensor, *, coeff: float = 1.0, n_iter: int = 1,
                       training: bool = True, mode: str = "soft",
                       eps: float = 1e-12) -> Tuple[Tensor, Tensor]:
    """The spectral-norm layer's weight, like torch's parametrization with a coefficient.

    In training, first ``n_iter`` power-iteration steps update ``u``, ``v`` in place (no
    gradient); then ``(W_sn, σ) = spectral_normalize_weight(W, u, v, coeff, mode)``. With
    ``training=False`` the stored u, v are used as they are. ``mode="exact"``: W / σ (SN-GAN,
    torch's parametrization); ``mode="soft"``: W / max(1, σ/coeff) (i-ResNet, Lip ≤ coeff).
    """
    op = "spectral_normalize"
    _check_vectors(W, u, v, op)
    n_iter, eps = _check_iter(n_iter, eps, op)
    coeff, exact = _check_mode(coeff, mode, op)
    if training:
        with torch.no_grad():
            torch.ops.kexue.spectral_norm_power_iteration(W, u, v, n_iter, eps)
    return torch.ops.kexue.spectral_normalize_weight(W, u, v, coeff, exact)


# ---- fake kernels: csrc/ops/spectral_norm.cpp's checks (bar the memory-overlap ones, which need data) --

_POWER, _GROUPED = "kexue.spectral_norm_power_iteration", "kexue.spectral_norm_power_iteration_grouped"
_NORM, _NORM_BWD = "kexue.spectral_normalize_weight", "kexue.spectral_normalize_weight_backward"


def _check_triplet(W, u, v, op, idx=None):
    sfx = "" if idx is None else f"[{idx}]"
    Wn, un, vn = ("W", "u", "v") if idx is None else ("Ws" + sfx, "us" + sfx, "vs" + sfx)
    C.device_supported(W, op)
    C.float_dtype(W, op, Wn)
    C.check(W.dim() == 2, op, Wn, " must be a 2-D matrix [out, in], got shape ", C.sizes(W))
    C.like(W, Wn, u, op, un)
    C.like(W, Wn, v, op, vn)
    C.check(u.dim() == 1 and u.shape[0] == W.shape[0], op, un, " must have shape [", W.shape[0], "] (the rows of ",
            Wn, " ", C.sizes(W), "), got ", C.sizes(u))
    C.check(v.dim() == 1 and v.shape[0] == W.shape[1], op, vn, " must have shape [", W.shape[1],
            "] (the columns of ", Wn, " ", C.sizes(W), "), got ", C.sizes(v))


def _check_writable(t, name, op):
    C.check(torch._debug_has_internal_overlap(t) != 1, op, name,
            " is updated in place and must not have internally overlapping memory (e.g. stride 0 from expand)")


def _check_iteration(n_iter, eps, op):
    C.check(n_iter >= 1, op, "n_iter must be at least 1, got ", n_iter)
    C.check(n_iter <= MAX_ITERATIONS, op, "n_iter must be at most ", MAX_ITERATIONS, ", got ", n_iter)
    C.check(C.finite(eps) and eps >= 0, op, "eps must be finite and non-negative, got ", C.num(eps))


def _check_coeff(coeff, op):
    C.check(C.finite(coeff) and coeff > 0, op, "coeff must be a positive number, got ", C.num(coeff))


@torch.library.register_fake("kexue::spectral_norm_power_iteration")
def _power_iteration_fake(W, u, v, n_iter, eps):
    _check_triplet(W, u, v, _POWER)
    _check_iteration(n_iter, eps, _POWER)
    _check_writable(u, "u", _POWER)
    _check_writable(v, "v", _POWER)
    return W.new_empty((), dtype=acc_dtype(W.dtype))


@torch.library.register_fake("kexue::spectral_norm_power_iteration_grouped")
def _power_iteration_grouped_fake(Ws, us, vs, n_iter, eps):
    C.check(len(us) == len(Ws) and len(vs) == len(Ws), _GROUPED, "Ws, us and vs must have the same length, got ",
            len(Ws), ", ", len(us), " and ", len(vs))
    _check_iteration(n_iter, eps, _GROUPED)
    if len(Ws) == 0:
        return torch.empty(0)
    for w, (W, u, v) in enumerate(zip(Ws, us, vs)):
        _check_triplet(W, u, v, _GROUPED, w)
        if w > 0:
            C.like(Ws[0], "Ws[0]", W, _GROUPED, f"Ws[{w}]")
        _check_writable(u, f"us[{w}]", _GROUPED)
        _check_writable(v, f"vs[{w}]", _GROUPED)
    return Ws[0].new_empty((len(Ws),), dtype=acc_dtype(Ws[0].dtype))


@torch.library.register_fake("kexue::spectral_normalize_weight")
def _normalize_weight_fake(W, u, v, coeff, exact):
    _check_triplet(W, u, v, _NORM)
    _check_coeff(coeff, _NORM)
    return W.new_empty(W.shape), W.new_empty((), dtype=acc_dtype(W.dtype))


@torch.library.register_fake("kexue::spectral_normalize_weight_backward")
def _normalize_weight_backward_fake(grad_out, grad_sigma, W, u, v, coeff, exact):
    _check_triplet(W, u, v, _NORM_BWD)
    _check_coeff(coeff, _NORM_BWD)
    C.like(W, "W", grad_out, _NORM_BWD, "grad_out")
    C.same_shape(W, "W", grad_out, _NORM_BWD, "grad_out")
    C.check(grad_sigma.numel() == 1 and grad_sigma.dim() <= 1, _NORM_BWD,
            "grad_sigma must be a scalar (0-d) tensor, got shape ", C.sizes(grad_sigma))
    C.like(W, "W", grad_sigma, _NORM_BWD, "grad_sigma", same_dtype=False)
    return W.new_empty(W.shape)


# ---- plain-PyTorch references ------------------------------------------------------------------


def reference_spectral_norm_power_iteration(W: Tensor, u: Tensor, v: Tensor, n_iter: int = 1,
                                            eps: float = 1e-12) -> Tensor:
    """torch's ``_SpectralNorm._power_method`` step for step (in W's dtype), then
    ``σ = uᵀ W v`` as torch's parametrization computes it, returned in the accumulation dtype."""
    with torch.no_grad():
        for _ in range(n_iter):
            u.copy_(F.normalize(torch.mv(W, v), dim=0, eps=eps))
            v.copy_(F.normalize(torch.mv(W.t(), u), dim=0, eps=eps))
        return torch.vdot(u, torch.mv(W, v)).to(acc_dtype(W.dtype))


def reference_spectral_norm_power_iteration_grouped(Ws: Sequence[Tensor], us: Sequence[Tensor],
                                                    vs: Sequence[Tensor], n_iter: int = 1,
                                                    eps: float = 1e-12) -> Tensor:
    sigmas: List[Tensor] = [reference_spectral_norm_power_iteration(W, u, v, n_iter, eps)
                            for W, u, v in zip(Ws, us, vs)]
    return torch.stack(sigmas) if sigmas else torch.empty(0)


def reference_spectral_normalize_weight(W: Tensor, u: Tensor, v: Tensor, *, coeff: float = 1.0,
                                        mode: str = "soft") -> Tuple[Tensor, Tensor]:
    """σ = uᵀ W v in the accumulation dtype (u, v detached), W / σ or W / max(1, σ/coeff)."""
    _, exact = _check_mode(coeff, mode, "reference_spectral_normalize_weight")
    acc = acc_dtype(W.dtype)
    sigma = torch.dot(u.detach().to(acc), torch.mv(W.to(acc), v.detach().to(acc)))
    div = sigma if exact else torch.clamp(sigma / coeff, min=1.0)
    return (W.to(acc) / div).to(W.dtype), sigma


def reference_spectral_normalize(W: Tensor, u: Tensor, v: Tensor, *, coeff: float = 1.0,
                                 n_iter: int = 1, training: bool = True, mode: str = "soft",
                                 eps: float = 1e-12) -> Tuple[Tensor, Tensor]:
    if training:
        reference_spectral_norm_power_iteration(W.detach(), u, v, n_iter, eps)
    return reference_spectral_normalize_weight(W, u, v, coeff=coeff, mode=mode)
