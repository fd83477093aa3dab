"""Diffusion steps (MODELS.md D1-D2): the forward noising ``q_sample`` and the sampling steps of
DDPM, DDIM and the probability-flow ODE, each one fused pass over memory.

Notation: ᾱ_t = Π_{s≤t}(1 − β_s) ("alpha_bar"), x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, and ``eps`` is the
model's prediction of ε. The kernels (csrc/kexue/diffusion.h) write every step as
``√ᾱ_prev·x̂0 + q·ε̂ + σ·z``; the ``reference_*`` functions below use the textbook forms instead,
so the tests check that rewriting too.

Per-sample values: ``t`` / ``alpha_bar*`` may be a Python number (one value for the batch, passed
to the kernel as a host number: no device copy, so a CUDA graph can capture the call) or a
tensor ``[batch]`` on the data's device.

Noise: an explicit ``noise`` tensor, or Gaussian noise drawn inside the kernel by Philox4x32-10
keyed from ``generator`` (the device's default generator when None): element i of a call is a
pure function of (seed, offset, i) (csrc/kexue/philox.h; ``reference_philox_normals`` here), so
a seeded generator reproduces a run on the same device and CUDA graph replays draw fresh noise.

Gradients (guidance, distillation): the steps are differentiable in ``x_t``, ``eps``,
``eps_next`` and an explicit ``noise`` tensor, and the x̂0 of ``return_x0`` has its gradient too
(through the clip, which passes the gradient where x̂0 lies inside [−c, c]). The schedule and the
coefficients (``alphas_cumprod``, ``alpha_bar*``) are not differentiable: one that requires grad
is a ValueError. ``q_sample`` is differentiable in all three arguments.
"""
from __future__ import annotations

import math

from typing import Optional, Tuple, Union

import numpy as np
import torch

from kexue.ops import _checks as C
from kexue.ops._autocast import promote_under_autocast
from kexue.ops._common import acc_dtype

Tensor = torch.Tensor
Number = Union[float, int]


def _per_sample(v, what: str) -> Tensor:
    if isinstance(v, Tensor):
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{what} must be a float or a tensor, got {type(v).__name__}")
    return torch.scalar_tensor(float(v), dtype=torch.float64)


def _step_index(t) -> Tensor:
    if isinstance(t, Tensor):
        return t
    if isinstance(t, bool) or not isinstance(t, int):
        raise TypeError(f"t must be an int or an integer tensor, got {type(t).__name__}")
    return torch.scalar_tensor(t, dtype=torch.int64)


def _step(op, *args):
    """op(*args), below the autograd layer when no tensor argument needs a gradient: the step
    ops' autograd is registered in Python and costs more than a step on a 2-D batch."""
    if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args)):
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def q_sample(x0: Tensor, noise: Tensor, alpha_bar: Union[Tensor, Number]) -> Tensor:
    """``√ᾱ·x0 + √(1−ᾱ)·noise`` with ``alpha_bar`` one value or ``[batch]``; differentiable in all
    three arguments."""
    return torch.ops.kexue.q_sample(x0, noise, _per_sample(alpha_bar, "alpha_bar"))


def ddpm_step(x_t: Tensor, eps: Tensor, t: Union[Tensor, int], alphas_cumprod: Tensor, *,
              noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
              variance: str = "beta", clip_x0: Optional[float] = None,
              return_x0: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """One ancestral step x_t → x_{t−1} (Ho et al. 2020, eq. 11):
    ``(x_t − β_t/√(1−ᾱ_t)·eps)/√α_t + σ_t·z`` with σ_t² = β_t (``variance="beta"``) or
    β̃_t = β_t(1−ᾱ_{t−1})/(1−ᾱ_t) (``"beta_tilde"``); no noise at t = 0.

    ``t`` is the 0-based step index into ``alphas_cumprod`` ([T]), an int or ``[batch]``.
    ``clip_x0=c`` clips the implied x̂0 = (x_t − √(1−ᾱ_t)·eps)/√ᾱ_t to [−c, c] and takes the
    posterior mean from it. ``return_x0`` also returns x̂0.
    Differentiable in ``x_t``, ``eps`` and ``noise`` (both outputs), not in ``alphas_cumprod``.
    """
    out, x0 = _step(torch.ops.kexue.ddpm_step.default, x_t, eps, _step_index(t), alphas_cumprod, noise,
                    generator, variance, None if clip_x0 is None else float(clip_x0), bool(return_x0))
    return (out, x0) if return_x0 else out


def ddim_step(x_t: Tensor, eps: Tensor, alpha_bar_t: Union[Tensor, Number],
              alpha_bar_prev: Union[Tensor, Number], *, eta: float = 0.0, noise: Optional[Tensor] = None,
              generator: Optional[torch.Generator] = None, clip_x0: Optional[float] = None,
              return_x0: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """One DDIM step (Song, Meng & Ermon 2021, eq. 12) from ᾱ_t to ᾱ_prev:
    ``√ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ²)·ε + σ·z`` with
    σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev). η = 0 is deterministic; η = 1 with adjacent
    steps is DDPM with σ² = β̃. With ``clip_x0``, ε is re-derived from the clipped x̂0.
    Differentiable in ``x_t``, ``eps`` and ``noise`` (both outputs), not in the ᾱ's.
    """
    out, x0 = _step(torch.ops.kexue.ddim_step.default, x_t, eps, _per_sample(alpha_bar_t, "alpha_bar_t"),
                    _per_sample(alpha_bar_prev, "alpha_bar_prev"), float(eta), noise, generator,
                    None if clip_x0 is None else float(clip_x0), bool(return_x0))
    return (out, x0) if return_x0 else out


def ode_euler_step(x_t: Tensor, eps: Tensor, alpha_bar_t: Union[Tensor, Number],
                   alpha_bar_next: Union[Tensor, Number]) -> Tensor:
    """Euler step of the probability-flow ODE (Song et al. 2021) written in x̄ = x/√ᾱ and
    σ = √((1−ᾱ)/ᾱ), where it reads dx̄/dσ = ε(x, σ):  x̄' = x̄ + (σ' − σ)·eps. (It coincides
    with DDIM at η = 0.) Differentiable in ``x_t`` and ``eps``, not in the ᾱ's."""
    return _step(torch.ops.kexue.ode_step.default, x_t, eps, _per_sample(alpha_bar_t, "alpha_bar_t"),
                 _per_sample(alpha_bar_next, "alpha_bar_next"), None)


def ode_heun_step(x_t: Tensor, eps: Tensor, eps_next: Tensor, alpha_bar_t: Union[Tensor, Number],
                  alpha_bar_next: Union[Tensor, Number]) -> Tensor:
    """Heun's (2nd order) step of the same ODE: ``eps_next`` is the model at the Euler point
    ``ode_euler_step(x_t, eps, ...)``; the step uses the mean slope (eps + eps_next)/2.
    Differentiable in ``x_t``, ``eps`` and ``eps_next`` (taken as an input: the dependence of
    eps_next on x_t goes through the model call that made it)."""
    return _step(torch.ops.kexue.ode_step.default, x_t, eps, _per_sample(alpha_bar_t, "alpha_bar_t"),
                 _per_sample(alpha_bar_next, "alpha_bar_next"), eps_next)


# ---- fake kernels: csrc/ops/diffusion.cpp's checks of shapes, dtypes and devices (its checks of
# values, which read the data, stay in the glue) ------------------------------------------------


def _check_pair(x, x_name, y, y_name, op):
    C.device_supported(x, op)
    C.float_dtype(x, op, x_name)
    C.check(x.dim() >= 1, op, x_name, " must be [batch, ...], got a 0-d tensor")
    C.like(x, x_name, y, op, y_name)
    C.same_shape(x, x_name, y, op, y_name)


def _check_per_sample(t, x, op, name):
    C.check(t.dtype.is_floating_point, op, name, " must be a floating tensor (or a Python float), got ",
            C.dtype_name(t.dtype))
    if t.device.type == "cpu" and t.numel() == 1:
        return  # a host number, read by the glue
    C.check(t.device == x.device, op, name, " must be a Python float, a CPU scalar or a tensor on ", x.device,
            ", got a tensor on ", t.device)
    C.check(t.numel() == 1 or (t.dim() == 1 and t.shape[0] == x.shape[0]), op, name,
            " must have one value or one per sample (shape [", x.shape[0], "]), got shape ", C.sizes(t))


def _check_clip(clip_x0, op):
    C.check(clip_x0 is None or (C.finite(clip_x0) and clip_x0 > 0), op, "clip_x0 must be positive and finite, got ",
            C.num(0.0 if clip_x0 is None else clip_x0))


def _check_noise(x, noise, generator, op):
    if noise is None:
        return
    C.check(generator is None, op, "pass either noise or generator, not both")
    C.like(x, "x_t", noise, op, "noise")
    C.same_shape(x, "x_t", noise, op, "noise")


def _check_ddpm_time(t, schedule, x, op):
    C.check(not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool, op,
            "t must hold integer step indices (int64), got ", C.dtype_name(t.dtype))
    C.check(schedule.dtype.is_floating_point, op, "alphas_cumprod must be a floating tensor, got ",
            C.dtype_name(schedule.dtype))
    C.check(schedule.dim() == 1 and schedule.shape[0] >= 1, op, "alphas_cumprod must be 1-D [T] with T >= 1, got shape ",
            C.sizes(schedule))
    C.check(schedule.device == x.device, op, "alphas_cumprod must be on ", x.device, " like x_t, got ", schedule.device)
    if t.device.type == "cpu" and t.numel() == 1:
        return
    C.check(t.device == x.device, op, "t must be an int, a CPU scalar or a tensor on ", x.device, ", got a tensor on ",
            t.device)
    C.check(t.numel() == 1 or (t.dim() == 1 and t.shape[0] == x.shape[0]), op,
            "t must have one value or one per sample (shape [", x.shape[0], "]), got shape ", C.sizes(t))


@torch.library.register_fake("kexue::q_sample")
def _q_sample_fake(x0, noise, alpha_bar):
    op = "kexue.q_sample"
    _check_pair(x0, "x0", noise, "noise", op)
    _check_per_sample(alpha_bar, x0, op, "alpha_bar")
    return x0.new_empty(x0.shape)


def _step_fake(x_t, return_x0):
    return x_t.new_empty(x_t.shape), (x_t.new_empty(x_t.shape) if return_x0 else x_t.new_empty(0))


@torch.library.register_fake("kexue::ddpm_step")
def _ddpm_fake(x_t, eps, t, alphas_cumprod, noise, generator, variance, clip_x0, return_x0):
    op = "kexue.ddpm_step"
    _check_pair(x_t, "x_t", eps, "eps", op)
    _check_clip(clip_x0, op)
    C.check(variance in ("beta", "beta_tilde"), op, 'variance must be "beta" or "beta_tilde", got "', variance, '"')
    _check_ddpm_time(t, alphas_cumprod, x_t, op)
    _check_noise(x_t, noise, generator, op)
    return _step_fake(x_t, return_x0)


@torch.library.register_fake("kexue::ddim_step")
def _ddim_fake(x_t, eps, alpha_bar_t, alpha_bar_prev, eta, noise, generator, clip_x0, return_x0):
    op = "kexue.ddim_step"
    _check_pair(x_t, "x_t", eps, "eps", op)
    _check_clip(clip_x0, op)
    C.check(C.finite(eta) and eta >= 0.0, op, "eta must be >= 0 and finite, got ", C.num(eta))
    _check_per_sample(alpha_bar_t, x_t, op, "alpha_bar_t")
    _check_per_sample(alpha_bar_prev, x_t, op, "alpha_bar_prev")
    if eta > 0.0:
        _check_noise(x_t, noise, generator, op)
    else:
        C.check(noise is None and generator is None, op, "eta = 0 is deterministic; noise and generator must be None")
    return _step_fake(x_t, return_x0)


@torch.library.register_fake("kexue::ode_step")
def _ode_fake(x_t, eps, alpha_bar_t, alpha_bar_next, eps_next):
    op = "kexue.ode_step"
    _check_pair(x_t, "x_t", eps, "eps", op)
    _check_per_sample(alpha_bar_t, x_t, op, "alpha_bar_t")
    _check_per_sample(alpha_bar_next, x_t, op, "alpha_bar_next")
    if eps_next is not None:
        _check_pair(x_t, "x_t", eps_next, "eps_next", op)
    return x_t.new_empty(x_t.shape)


# ---------------------------------------------------------------------------------------------
# References: the textbook formulas in plain torch (the oracle of the tests, the eager baseline
# of the benchmarks).

def _column(v, x: Tensor) -> Tensor:
    """A per-sample value as a column broadcasting over each sample's elements, in x's acc dtype."""
    v = torch.as_tensor(v, dtype=acc_dtype(x.dtype), device=x.device)
    return v.reshape((-1,) + (1,) * (x.dim() - 1))


def reference_q_sample(x0: Tensor, noise: Tensor, alpha_bar) -> Tensor:
    ab = _column(alpha_bar, x0)
    return (ab.sqrt() * x0 + (1 - ab).sqrt() * noise).to(x0.dtype)


def _div(num: Tensor, den: Tensor) -> Tensor:
    """num/den, and 0 where den = 0. The denominators here are 1 − ᾱ_t and √(1−ᾱ_t), zero at
    ᾱ_t = 1 where x_t = x0 holds no ε; the kernels take inv_s, q and β̃ as 0 there
    (csrc/kexue/diffusion.h). The inner where keeps inf and NaN out of the values and the gradients."""
    nonzero = den > 0
    return torch.where(nonzero, num / torch.where(nonzero, den, 1.0), 0.0)


def _x0_pred(x_t, eps, ab, clip_x0):
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    return x0 if clip_x0 is None else x0.clamp(-clip_x0, clip_x0)


def _ddpm_alpha_bars(t, alphas_cumprod: Tensor, x: Tensor) -> Tuple[Tensor, Tensor]:
    """ᾱ_t and ᾱ_{t−1} (1 at t = 0) as columns over x's samples, in x's acc dtype."""
    sched = alphas_cumprod.to(device=x.device, dtype=acc_dtype(x.dtype))
    t = torch.as_tensor(t, device=x.device).reshape(-1).long()
    ab_prev = torch.where(t > 0, sched[(t - 1).clamp_min(0)], torch.ones_like(sched[t]))
    return _column(sched[t], x), _column(ab_prev, x)


def reference_ddpm_step(x_t: Tensor, eps: Tensor, t, alphas_cumprod: Tensor, noise: Tensor, *,
                        variance: str = "beta", clip_x0: Optional[float] = None) -> Tensor:
    acc = acc_dtype(x_t.dtype)
    x, e, z = x_t.to(acc), eps.to(acc), noise.to(acc)
    ab, ab_prev = _ddpm_alpha_bars(t, alphas_cumprod, x)
    alpha = ab / ab_prev
    beta = 1 - alpha
    if clip_x0 is None:
        mean = (x - _div(beta, (1 - ab).sqrt()) * e) / alpha.sqrt()
    else:  # posterior mean of q(x_{t−1} | x_t, x̂0), Ho et al. eq. 7; the kernels' √ᾱ_{t−1}·x̂0 at ᾱ_t = 1
        x0 = _x0_pred(x, e, ab, clip_x0)
        x0_coef = torch.where(ab < 1, _div(ab_prev.sqrt() * beta, 1 - ab), ab_prev.sqrt())
        mean = x0_coef * x0 + _div(alpha.sqrt() * (1 - ab_prev), 1 - ab) * x
    var = beta if variance == "beta" else _div(beta * (1 - ab_prev), 1 - ab)
    # β < 0 only where ᾱ_t > ᾱ_{t−1} (a schedule that is not decreasing): no noise, as in the kernels
    var = var.clamp_min(0)
    t0 = _column(torch.as_tensor(t, device=x.device).reshape(-1), x) == 0
    var = torch.where(t0, torch.zeros_like(var), var)
    return (mean + var.sqrt() * z).to(x_t.dtype)


def reference_ddim_step(x_t: Tensor, eps: Tensor, alpha_bar_t, alpha_bar_prev, *, eta: float = 0.0,
                        noise: Optional[Tensor] = None, clip_x0: Optional[float] = None) -> Tensor:
    acc = acc_dtype(x_t.dtype)
    x, e = x_t.to(acc), eps.to(acc)
    ab, ab_prev = _column(alpha_bar_t, x), _column(alpha_bar_prev, x)
    x0 = _x0_pred(x, e, ab, clip_x0)
    if clip_x0 is not None:  # at ᾱ_t = 1, x_t holds no ε to re-derive: the kernels keep eps
        e = torch.where(ab < 1, _div(x - ab.sqrt() * x0, (1 - ab).sqrt()), e)
    sigma = eta * (_div(1 - ab_prev, 1 - ab) * (1 - ab / ab_prev)).clamp_min(0).sqrt()
    out = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp_min(0).sqrt() * e
    if eta > 0:
        out = out + sigma * noise.to(acc)
    return out.to(x_t.dtype)


def _sigma(ab):
    return ((1 - ab) / ab).sqrt()


def reference_ode_euler_step(x_t: Tensor, eps: Tensor, alpha_bar_t, alpha_bar_next) -> Tensor:
    acc = acc_dtype(x_t.dtype)
    ab, ab_next = _column(alpha_bar_t, x_t), _column(alpha_bar_next, x_t)
    xbar = x_t.to(acc) / ab.sqrt()
    return ((xbar + (_sigma(ab_next) - _sigma(ab)) * eps.to(acc)) * ab_next.sqrt()).to(x_t.dtype)


def reference_ode_heun_step(x_t: Tensor, eps: Tensor, eps_next: Tensor, alpha_bar_t, alpha_bar_next) -> Tensor:
    acc = acc_dtype(x_t.dtype)
    mean = 0.5 * (eps.to(acc) + eps_next.to(acc))
    return reference_ode_euler_step(x_t.to(acc), mean, alpha_bar_t, alpha_bar_next).to(x_t.dtype)


# ---------------------------------------------------------------------------------------------
# Autograd of the steps: the backward is the vector-Jacobian product of the reference step, so the
# derivative has one source of truth, the textbook formula. A step is affine in x_t, eps, eps_next
# and the noise, except for the clip of x̂0, whose mask depends only on x_t and eps; so the VJP at
# the saved x_t and eps is exact, and the noise enters as zeros (its value does not change the
# Jacobian, so it is not saved; its gradient is grad·σ). torch.func.vjp keeps the backward itself
# differentiable (double backward) and traceable by AOT autograd. The second output x̂0 (with
# return_x0) gets its gradient too, through the same x̂0 formula. Philox noise has no gradient.


def _refuse_coefficient_grads(op: str, differentiable: str, **coefficients) -> None:
    """The schedule and the coefficients are the sampler's settings, not the model's outputs: the
    steps give them no gradient, and an error says so where a None would pass silently."""
    for name, value in coefficients.items():
        if value.requires_grad:
            raise ValueError(f"{op}: {name} requires grad, but the step is differentiable only in "
                             f"{differentiable}; the schedule and coefficients are not (detach {name})")


def _needed(ctx, grads) -> tuple:
    """The input gradients, None where autograd does not ask for one (or the input is not a tensor)."""
    return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))


def _vjp(fn, primals, cotangents):
    """The gradients of ``fn`` (plain torch) at ``primals`` against ``cotangents``."""
    _, pullback = torch.func.vjp(fn, *primals)
    return pullback(cotangents)


def _step_x0(x_t: Tensor, eps: Tensor, ab: Tensor, clip_x0: Optional[float]) -> Tensor:
    """The ops' second output x̂0 in plain torch (ab: ᾱ_t as a column in x_t's acc dtype)."""
    acc = acc_dtype(x_t.dtype)
    return _x0_pred(x_t.to(acc), eps.to(acc), ab, clip_x0).to(x_t.dtype)


def _step_vjp(ctx, step, x0_of, primals, grad_out, grad_x0):
    """The VJP of a sampling step's outputs: ``step(*primals)``, and ``x0_of(x_t, eps)`` when the
    op returns x̂0 (otherwise its second output is an empty placeholder and grad_x0 is ignored)."""
    if not ctx.return_x0:
        return _vjp(step, primals, grad_out)
    return _vjp(lambda *p: (step(*p), x0_of(p[0], p[1])), primals, (grad_out, grad_x0))


def _ddpm_setup_context(ctx, inputs, output):
    x_t, eps, t, alphas_cumprod, _noise, _generator, variance, clip_x0, return_x0 = inputs
    _refuse_coefficient_grads("kexue.ddpm_step", "x_t, eps and noise", alphas_cumprod=alphas_cumprod)
    ctx.save_for_backward(x_t, eps, t, alphas_cumprod)
    ctx.variance, ctx.clip_x0, ctx.return_x0 = variance, clip_x0, return_x0


def _ddpm_backward(ctx, grad_out, grad_x0):
    x_t, eps, t, alphas_cumprod = ctx.saved_tensors

    def step(x, e, z):
        return reference_ddpm_step(x, e, t, alphas_cumprod, z, variance=ctx.variance, clip_x0=ctx.clip_x0)

    def x0_of(x, e):
        return _step_x0(x, e, _ddpm_alpha_bars(t, alphas_cumprod, x)[0], ctx.clip_x0)

    gx, ge, gz = _step_vjp(ctx, step, x0_of, (x_t, eps, torch.zeros_like(x_t)), grad_out, grad_x0)
    return _needed(ctx, (gx, ge, None, None, gz, None, None, None, None))


def _ddim_setup_context(ctx, inputs, output):
    x_t, eps, alpha_bar_t, alpha_bar_prev, eta, _noise, _generator, clip_x0, return_x0 = inputs
    _refuse_coefficient_grads("kexue.ddim_step", "x_t, eps and noise", alpha_bar_t=alpha_bar_t,
                              alpha_bar_prev=alpha_bar_prev)
    ctx.save_for_backward(x_t, eps, alpha_bar_t, alpha_bar_prev)
    ctx.eta, ctx.clip_x0, ctx.return_x0 = eta, clip_x0, return_x0


def _ddim_backward(ctx, grad_out, grad_x0):
    x_t, eps, alpha_bar_t, alpha_bar_prev = ctx.saved_tensors

    def step(x, e, z):
        return reference_ddim_step(x, e, alpha_bar_t, alpha_bar_prev, eta=ctx.eta, noise=z, clip_x0=ctx.clip_x0)

    def x0_of(x, e):
        return _step_x0(x, e, _column(alpha_bar_t, x), ctx.clip_x0)

    gx, ge, gz = _step_vjp(ctx, step, x0_of, (x_t, eps, torch.zeros_like(x_t)), grad_out, grad_x0)
    return _needed(ctx, (gx, ge, None, None, None, gz, None, None, None))


def _ode_setup_context(ctx, inputs, output):
    x_t, eps, alpha_bar_t, alpha_bar_next, eps_next = inputs
    _refuse_coefficient_grads("kexue.ode_step", "x_t, eps and eps_next", alpha_bar_t=alpha_bar_t,
                              alpha_bar_next=alpha_bar_next)
    ctx.save_for_backward(x_t, eps, alpha_bar_t, alpha_bar_next, eps_next)


def _ode_backward(ctx, grad_out):
    x_t, eps, alpha_bar_t, alpha_bar_next, eps_next = ctx.saved_tensors
    if eps_next is None:
        def euler(x, e):
            return reference_ode_euler_step(x, e, alpha_bar_t, alpha_bar_next)

        gx, ge = _vjp(euler, (x_t, eps), grad_out)
        return _needed(ctx, (gx, ge, None, None, None))

    def heun(x, e, e_next):
        return reference_ode_heun_step(x, e, e_next, alpha_bar_t, alpha_bar_next)

    gx, ge, g_next = _vjp(heun, (x_t, eps, eps_next), grad_out)
    return _needed(ctx, (gx, ge, None, None, g_next))


torch.library.register_autograd("kexue::ddpm_step", _ddpm_backward, setup_context=_ddpm_setup_context)
torch.library.register_autograd("kexue::ddim_step", _ddim_backward, setup_context=_ddim_setup_context)
torch.library.register_autograd("kexue::ode_step", _ode_backward, setup_context=_ode_setup_context)


# ---------------------------------------------------------------------------------------------
# The in-kernel noise, reproduced in numpy (csrc/kexue/philox.h).

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)


def reference_philox4x32_10(counter: np.ndarray, key: Tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 blocks for counters ``[n, 4]`` (uint32 words) and a 64-bit key as two words."""
    c = counter.astype(np.uint64)
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for _ in range(10):
        p0 = _M0 * c[:, 0]
        p1 = _M1 * c[:, 2]
        c = np.stack([(p1 >> np.uint64(32)) ^ c[:, 1] ^ k0, p1 & _MASK,
                      (p0 >> np.uint64(32)) ^ c[:, 3] ^ k1, p0 & _MASK], axis=1)
        k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
    return c.astype(np.uint32)


def reference_philox_normals(seed: int, offset: int, n: int) -> Tensor:
    """The ``n`` standard normals the kernels draw for a call keyed (seed, offset), as float32."""
    groups = (n + 3) // 4
    g = np.arange(groups, dtype=np.uint64)
    counter = np.stack([g & _MASK, g >> np.uint64(32), np.full_like(g, offset & 0xFFFFFFFF),
                        np.full_like(g, (offset >> 32) & 0xFFFFFFFF)], axis=1)
    words = reference_philox4x32_10(counter, (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF))
    w = words.astype(np.float64)
    u1 = (np.floor(w[:, 0::2] / 256) + 1) * 2.0**-24
    u2 = np.floor(w[:, 1::2] / 256) * 2.0**-24
    r = np.sqrt(-2 * np.log(u1))
    z = np.stack([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)], axis=2)  # [groups, 2, 2]
    return torch.from_numpy(z.reshape(-1)[:n].astype(np.float32))


promote_under_autocast("q_sample", (0, 1))
promote_under_autocast("ddpm_step", (0, 1, 4))
promote_under_autocast("ddim_step", (0, 1, 5))
promote_under_autocast("ode_step", (0, 1, 4))
