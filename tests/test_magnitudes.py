"""fp32 kernels on inputs far from unit scale, against float64 references computed by the
``reference_*`` ops on the same (fp32-rounded) inputs: dynamic routing's forward and gradient for
|û| from 1e-20 to 1e15 (its squash once squared |s|: a 30% wrong gradient from |û| ~ 1e5, NaN from
1e9), and the spectral-norm power iteration and normalisation for weights of 1e-19 to 1e19 (|Wv|²
and Wᵀ(Wv) overflowed fp32 there although σ ~ 1e20 fits it).

Tolerances: errors are max|ours - ref| relative to max|ref|, so they do not depend on the scale.
fp32's unit roundoff is 6e-8; the routing sums 24 inputs over 3 iterations and the power iteration
sums up to 2000 terms per dot product, and the kernels measured at most 8e-7 (routing) and 2e-7 (σ)
at every magnitude here: rtol = 1e-5 leaves a tenfold margin and still catches any formula that
loses precision with the scale. Results that fp32 cannot represent (the routing output at
|û| = 1e-20 is ~1e-53) are held to an absolute floor of fp32's smallest normal number.
"""
import pytest
import torch

from kexue.ops import (
    dynamic_routing,
    reference_dynamic_routing,
    reference_spectral_norm_power_iteration,
    reference_spectral_normalize_weight,
    spectral_norm_power_iteration,
    spectral_normalize_weight,
)

RTOL = 1e-5
FLOOR = torch.finfo(torch.float32).tiny


def assert_close_scaled(ours, ref, rtol=RTOL, what=""):
    """max|ours - ref| <= rtol·max|ref| + FLOOR, with ours finite."""
    assert torch.isfinite(ours).all(), f"{what}: not finite"
    err = (ours.double() - ref.double()).abs().max().item()
    bound = rtol * ref.abs().max().item() + FLOOR
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e} (max |ref| {ref.abs().max().item():.3e})"


# ---- dynamic routing ---------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-20, 1e-5, 1.0, 1e5, 1e9, 1e15])
@pytest.mark.parametrize("squash", ["sabour", "post"])
def test_dynamic_routing_magnitudes(device, scale, squash):
    g = torch.Generator().manual_seed(0)
    u = (torch.randn(2, 24, 6, 8, generator=g, dtype=torch.float64) * scale).float().to(device)
    grad_v = torch.randn(2, 6, 8, generator=g, dtype=torch.float64).float().to(device)
    u32 = u.clone().requires_grad_()
    v32 = dynamic_routing(u32, 3, squash=squash)
    (g32,) = torch.autograd.grad(v32, u32, grad_v)
    u64 = u.double().requires_grad_()
    v64 = reference_dynamic_routing(u64, 3, squash=squash)
    (g64,) = torch.autograd.grad(v64, u64, grad_v.double())
    assert_close_scaled(v32, v64, what="v")
    assert_close_scaled(g32, g64, what="grad u_hat")


# ---- spectral normalisation --------------------------------------------------------------------

SCALES = [1e-19, 1.0, 1e19]


def make(shape, scale, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    u = torch.randn(shape[0], generator=g, dtype=torch.float64)
    v = torch.randn(shape[1], generator=g, dtype=torch.float64)
    return [t.float().to(device) for t in (W, u / u.norm(), v / v.norm())]


# (300, 700): several CPU tasks and CUDA row slices; (2000, 40): 32 slices, two CPU tasks.
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shape", [(30, 20), (300, 700), (2000, 40)])
def test_power_iteration_magnitudes(device, scale, shape):
    W, u, v = make(shape, scale, device)
    # eps guards |Wv| against 0 relative to unit weights; scaled with W it keeps that role (with
    # the default 1e-12, a weight of 1e-19 is below the guard, and u, v are not unit even in fp64).
    eps = 1e-12 * scale
    ur, vr = u.double(), v.double()
    sigma_ref = reference_spectral_norm_power_iteration(W.double(), ur, vr, n_iter=3, eps=eps)
    sigma = spectral_norm_power_iteration(W, u, v, n_iter=3, eps=eps)
    assert torch.isfinite(sigma) and torch.isfinite(u).all() and torch.isfinite(v).all()
    torch.testing.assert_close(sigma.double(), sigma_ref, rtol=RTOL, atol=0)
    for ours, ref, name in ((u, ur, "u"), (v, vr, "v")):
        # unit up to the rounding of its entries to fp32, and the fp64 iteration's direction
        assert abs(ours.double().norm().item() - 1.0) <= 1e-6, name
        assert (ours.double() - ref).norm().item() <= RTOL, name


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("mode", ["exact", "soft"])
def test_normalize_weight_magnitudes(device, scale, mode):
    shape = (30, 20)
    W, u, v = make(shape, scale, device, seed=1)
    # converged vectors, so that sigma ~ |W|_2 > 0 and the soft mode divides
    ud, vd = u.double(), v.double()
    reference_spectral_norm_power_iteration(W.double(), ud, vd, n_iter=50, eps=1e-12 * scale)
    u, v = ud.float(), vd.float()
    coeff = 0.5 * scale  # below sigma: the soft mode scales too
    G = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(device)
    Wg = W.clone().requires_grad_()
    out, sigma = spectral_normalize_weight(Wg, u, v, coeff=coeff, mode=mode)
    Wr = W.double().requires_grad_()
    outr, sigmar = reference_spectral_normalize_weight(Wr, u.double(), v.double(), coeff=coeff, mode=mode)
    assert_close_scaled(out, outr, what="W_sn")
    torch.testing.assert_close(sigma.double(), sigmar.detach(), rtol=RTOL, atol=0)
    # the sigma term weighted by 1/scale: comparable with the W_sn term (~G/sigma), so both the
    # a·G and the <G, W>/sigma² parts of the gradient are exercised
    ((out * G).sum() + (0.7 / scale) * sigma).backward()
    ((outr * G.double()).sum() + (0.7 / scale) * sigmar).backward()
    assert_close_scaled(Wg.grad, Wr.grad, what="grad W")
