"""Autograd of the diffusion sampling steps (ddpm_step, ddim_step, ode_step): float64 gradcheck of
the kernels' forward against their backward (the VJP of the references), the same gradients as
autograd through the references, the refusal of gradients for the schedule and coefficients, and
the references at ᾱ_t = 1 (1 − ᾱ_t = 0), where they must be finite and equal the kernels."""
from dataclasses import dataclass
from typing import Callable, List

import pytest
import torch

from kexue.ops import diffusion as D

F64 = torch.float64
SHAPE = (3, 4)
CLIP = 1.0
SCHEDULE = [0.999, 0.99, 0.95, 0.9, 0.8, 0.7, 0.5, 0.3, 0.1, 0.05]  # ᾱ_t, t = 0..9
SCHEDULE_FROM_ONE = [1.0, 1.0, 0.99, 0.9, 0.5]  # ᾱ_0 = ᾱ_1 = 1: x_t holds no ε at t = 0, 1
T_PER_SAMPLE = [0, 4, 9]  # t = 0 takes no noise


def _randn(device, seed, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=F64).to(device)


def _x0_away_from_clip(device, seed):
    """x̂0 values at least 0.2 from ±CLIP, half of them clipped: gradcheck's finite differences
    (1e-6) then never cross the clip, where the step is not differentiable."""
    g = torch.Generator().manual_seed(seed)
    mag = 0.8 * CLIP * torch.rand(SHAPE, generator=g, dtype=F64)
    mag = torch.where(torch.rand(SHAPE, generator=g) < 0.5, mag, mag + 1.2 * CLIP)
    sign = torch.where(torch.rand(SHAPE, generator=g) < 0.5, -1.0, 1.0).to(F64)
    return (sign * mag).to(device)


def _inputs(device, abar, n_extra):
    """x_t whose x̂0 keeps away from the clip, eps, and ``n_extra`` more tensors (noise, eps_next),
    all leaves that require grad. ``abar``: ᾱ_t per sample."""
    eps = _randn(device, 1)
    ab = torch.as_tensor(abar, dtype=F64).to(device).reshape(-1, 1)
    x_t = ab.sqrt() * _x0_away_from_clip(device, 0) + (1 - ab).sqrt() * eps
    extra = [_randn(device, 2 + i) for i in range(n_extra)]
    return [t.requires_grad_() for t in [x_t, eps] + extra]


def _x0_of(x_t, eps, abar, clip):
    """The ops' second output x̂0, written out here."""
    ab = torch.as_tensor(abar, dtype=F64).to(x_t.device).reshape(-1, 1)
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    return x0 if clip is None else x0.clamp(-clip, clip)


def _noise_source(device, philox, noise):
    """The noise arguments of a step: a generator seeded afresh (the same noise at every call, as
    gradcheck needs), the given tensor, or none."""
    if philox:
        return dict(generator=torch.Generator(device).manual_seed(0))
    return dict(noise=noise[0]) if noise else {}


def _reference_noise(x, noise):
    """The noise the reference takes: the given tensor, or zeros for Philox noise (which adds
    nothing to the gradients of x_t and eps) and for none."""
    return noise[0] if noise else torch.zeros_like(x)


@dataclass
class Case:
    op: Callable  # (*tensors) -> the public wrapper's output(s)
    ref: Callable  # (*tensors) -> the same outputs through the references
    tensors: List[torch.Tensor]


def _ddpm(device, t=5, variance="beta", clip=None, return_x0=False, schedule=SCHEDULE, philox=False):
    ac = torch.tensor(schedule, dtype=F64, device=device)
    t_arg = torch.tensor(t, device=device) if isinstance(t, list) else t
    abar = ac[torch.as_tensor(t, device=device)].expand(SHAPE[0])
    kw = dict(variance=variance, clip_x0=clip)
    tensors = _inputs(device, abar, 0 if philox else 1)

    def op(x, e, *noise):
        return D.ddpm_step(x, e, t_arg, ac, return_x0=return_x0, **_noise_source(device, philox, noise), **kw)

    def ref(x, e, *noise):
        out = D.reference_ddpm_step(x, e, t, ac, _reference_noise(x, noise), **kw)
        return (out, _x0_of(x, e, abar, clip)) if return_x0 else out

    return Case(op, ref, tensors)


def _per_sample(v, device):
    """A Python number as it is (the host-number path), a list as a [batch] tensor on the device."""
    return torch.tensor(v, dtype=F64, device=device) if isinstance(v, list) else v


def _ddim(device, abar_t=0.3, abar_prev=0.6, eta=0.0, clip=None, return_x0=False, philox=False):
    abar, abar_prev = _per_sample(abar_t, device), _per_sample(abar_prev, device)
    kw = dict(eta=eta, clip_x0=clip)
    tensors = _inputs(device, abar_t, 1 if eta > 0 and not philox else 0)

    def op(x, e, *noise):
        return D.ddim_step(x, e, abar, abar_prev, return_x0=return_x0, **_noise_source(device, philox, noise), **kw)

    def ref(x, e, *noise):
        out = D.reference_ddim_step(x, e, abar, abar_prev, noise=_reference_noise(x, noise), **kw)
        return (out, _x0_of(x, e, abar_t, clip)) if return_x0 else out

    return Case(op, ref, tensors)


def _ode(device, heun):
    abar_t = 0.4
    abar_next = torch.tensor([0.5, 0.7, 0.9], dtype=F64, device=device)
    if heun:
        return Case(lambda x, e, e2: D.ode_heun_step(x, e, e2, abar_t, abar_next),
                    lambda x, e, e2: D.reference_ode_heun_step(x, e, e2, abar_t, abar_next),
                    _inputs(device, abar_t, 1))
    return Case(lambda x, e: D.ode_euler_step(x, e, abar_t, abar_next),
                lambda x, e: D.reference_ode_euler_step(x, e, abar_t, abar_next), _inputs(device, abar_t, 0))


CASES = {
    **{f"ddpm-t{'s' if isinstance(t, list) else t}-{v}-clip{c}": (lambda d, t=t, v=v, c=c: _ddpm(
        d, t, v, c, return_x0=c is not None))
       for t in (5, T_PER_SAMPLE) for v in ("beta", "beta_tilde") for c in (None, CLIP)},
    "ddpm-return_x0-unclipped": lambda d: _ddpm(d, T_PER_SAMPLE, return_x0=True),
    "ddpm-philox": lambda d: _ddpm(d, T_PER_SAMPLE, "beta_tilde", CLIP, philox=True),
    "ddpm-abar1": lambda d: _ddpm(d, [0, 1, 3], "beta_tilde", CLIP, True, SCHEDULE_FROM_ONE),
    "ddim-eta0": lambda d: _ddim(d),
    "ddim-eta0-clip": lambda d: _ddim(d, [0.2, 0.5, 0.8], 0.9, clip=CLIP, return_x0=True),
    "ddim-eta0.5-noise": lambda d: _ddim(d, eta=0.5),
    "ddim-eta1-noise-clip": lambda d: _ddim(d, [0.2, 0.5, 0.8], 0.9, eta=1.0, clip=CLIP, return_x0=True),
    "ddim-eta0.5-philox": lambda d: _ddim(d, eta=0.5, clip=CLIP, philox=True),
    "ddim-abar1": lambda d: _ddim(d, [1.0, 1.0, 0.5], [1.0, 0.9, 0.8], eta=0.5, clip=CLIP, return_x0=True),
    "ode-euler": lambda d: _ode(d, heun=False),
    "ode-heun": lambda d: _ode(d, heun=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck(device, name):
    case = CASES[name](device)
    assert torch.autograd.gradcheck(case.op, case.tensors)


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_equals_gradient_through_reference(device, name):
    case = CASES[name](device)
    ours, ref = _as_tuple(case.op(*case.tensors)), _as_tuple(case.ref(*case.tensors))
    cotangents = [_randn(device, 10 + i) for i in range(len(ours))]
    got = torch.autograd.grad(ours, case.tensors, cotangents)
    want = torch.autograd.grad(ref, case.tensors, cotangents)
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.isfinite(g).all(), f"input {i}"
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=f"{name}: gradient of input {i}")


def test_double_backward(device):
    case = _ddpm(device, T_PER_SAMPLE, "beta_tilde", CLIP, return_x0=True)
    assert torch.autograd.gradgradcheck(case.op, case.tensors)


def _with_grad(v, device):
    return torch.tensor(v, dtype=F64, device=device, requires_grad=True)


@pytest.mark.parametrize("call,name", [
    (lambda x, d: D.ddpm_step(x, x, 3, _with_grad(SCHEDULE, d)), "alphas_cumprod"),
    (lambda x, d: D.ddim_step(x, x, _with_grad(0.3, d), 0.6), "alpha_bar_t"),
    (lambda x, d: D.ddim_step(x, x, 0.3, _with_grad([0.5, 0.6, 0.7], d), eta=0.5, noise=x), "alpha_bar_prev"),
    (lambda x, d: D.ode_euler_step(x, x, _with_grad(0.3, d), 0.6), "alpha_bar_t"),
    (lambda x, d: D.ode_heun_step(x, x, x, 0.3, _with_grad(0.6, d)), "alpha_bar_next"),
], ids=["ddpm-alphas_cumprod", "ddim-alpha_bar_t", "ddim-alpha_bar_prev", "euler-alpha_bar_t", "heun-alpha_bar_next"])
@pytest.mark.parametrize("x_needs_grad", [False, True])
def test_coefficient_that_requires_grad_is_an_error(device, call, name, x_needs_grad):
    x = _randn(device, 0).requires_grad_(x_needs_grad)
    with pytest.raises(ValueError, match=f"{name} requires grad, but the step is differentiable only in"):
        call(x, device)


def test_coefficient_that_requires_grad_is_an_error_through_torch_ops(device):
    x = _randn(device, 0)
    with pytest.raises(ValueError, match="alpha_bar_next requires grad"):
        torch.ops.kexue.ode_step(x, x, torch.tensor(0.3, dtype=F64), _with_grad(0.6, device), None)


@pytest.mark.parametrize("t", [0, 1, [0, 1, 2]])
@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
@pytest.mark.parametrize("clip", [None, CLIP])
def test_ddpm_reference_at_alpha_bar_one_is_finite_and_equals_kernel(device, t, variance, clip):
    ac = torch.tensor(SCHEDULE_FROM_ONE, dtype=F64, device=device)
    x, eps, z = (_randn(device, i) for i in range(3))
    t_arg = torch.tensor(t, device=device) if isinstance(t, list) else t
    ref = D.reference_ddpm_step(x, eps, t, ac, z, variance=variance, clip_x0=clip)
    assert torch.isfinite(ref).all()
    ours = D.ddpm_step(x, eps, t_arg, ac, noise=z, variance=variance, clip_x0=clip)
    torch.testing.assert_close(ours, ref, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("abar_prev", [1.0, 0.9])
@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("clip", [None, CLIP])
def test_ddim_reference_at_alpha_bar_one_is_finite_and_equals_kernel(device, abar_prev, eta, clip):
    x, eps, z = (_randn(device, i) for i in range(3))
    noise = z if eta > 0 else None
    ref = D.reference_ddim_step(x, eps, 1.0, abar_prev, eta=eta, noise=noise, clip_x0=clip)
    assert torch.isfinite(ref).all()
    ours = D.ddim_step(x, eps, 1.0, abar_prev, eta=eta, noise=noise, clip_x0=clip)
    torch.testing.assert_close(ours, ref, rtol=1e-14, atol=1e-14)


def test_opcheck_with_inputs_that_require_grad(device):
    x, eps, z = (_randn(device, i).requires_grad_() for i in range(3))
    ac = torch.tensor(SCHEDULE, dtype=F64, device=device)
    ab = torch.tensor([0.2, 0.4, 0.6], dtype=F64, device=device)
    host = torch.tensor(0.5, dtype=F64)
    cases = [
        (torch.ops.kexue.ddpm_step, (x, eps, torch.tensor(T_PER_SAMPLE, device=device), ac, z, None, "beta_tilde",
                                     CLIP, True)),
        (torch.ops.kexue.ddim_step, (x, eps, ab, host, 0.5, z, None, None, False)),
        (torch.ops.kexue.ode_step, (x, eps, host, ab, z)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
