"""The von Mises-Fisher distribution and its Bessel functions: against scipy, quadrature and
sample moments; Wood's sampler batching; reparameterised gradients; bad input."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import special, stats

from kexue.distributions import (
    HypersphericalUniform,
    VonMisesFisher,
    bessel_iv_ratio,
    kl_vmf_uniform,
    log_bessel_iv,
    log_sphere_area,
    mean_resultant_length,
)
from kexue.distributions import von_mises_fisher as vmf_module

DIMS = [2, 3, 5, 16, 64, 256]
KAPPAS = np.logspace(-3, 4, 120)


def unit(d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(d, generator=g, dtype=dtype), dim=0)


# ---------------------------------------------------------------------------------------------
# Bessel functions
@pytest.mark.parametrize("d", DIMS)
def test_log_bessel_and_ratio_match_scipy(d):
    v = d / 2 - 1
    x = torch.tensor(KAPPAS)
    with np.errstate(divide="ignore", invalid="ignore"):
        ive_v, ive_v1 = special.ive(v, KAPPAS), special.ive(v + 1, KAPPAS)
        ref_log = np.log(ive_v) + KAPPAS
        ref_ratio = ive_v1 / ive_v
    ok = (ive_v > 1e-290) & (ive_v1 > 1e-290)  # where scipy itself has not underflowed
    assert ok.sum() > 0.5 * len(KAPPAS)
    ours = log_bessel_iv(v, x).numpy()
    np.testing.assert_allclose(ours[ok], ref_log[ok], rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(bessel_iv_ratio(v, x).numpy()[ok], ref_ratio[ok], rtol=1e-10)
    # past scipy's underflow, log I_v keeps going: the small-x series (x/2)^v / Γ(v+1)
    small = torch.tensor([1e-3, 1e-6], dtype=torch.float64)
    series = v * torch.log(small / 2) - math.lgamma(v + 1)
    torch.testing.assert_close(log_bessel_iv(v, small), series, rtol=1e-6, atol=1e-6)


def test_bessel_edges_dtypes_and_gradient():
    x0 = torch.tensor([0.0, 2.0])
    assert log_bessel_iv(0, x0)[0] == 0 and log_bessel_iv(1.5, x0)[0] == -math.inf
    assert bessel_iv_ratio(3.0, x0)[0] == 0
    # float32 in, float32 out, computed in float64
    x32 = torch.tensor([0.5, 30.0, 3000.0])
    out = log_bessel_iv(7.0, x32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), log_bessel_iv(7.0, x32.double()), rtol=1e-6, atol=0)
    # d/dx log I_v(x) = I_{v+1}/I_v + v/x
    x = torch.tensor([1e-2, 0.7, 12.0, 900.0], dtype=torch.float64, requires_grad=True)
    for v in (0.0, 0.5, 31.0):
        (g,) = torch.autograd.grad(log_bessel_iv(v, x).sum(), x)
        torch.testing.assert_close(g, bessel_iv_ratio(v, x.detach()) + v / x.detach(), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="order v"):
        log_bessel_iv(-1.0, x)
    with pytest.raises(TypeError, match="floating"):
        bessel_iv_ratio(1.0, torch.tensor([1, 2]))


# ---------------------------------------------------------------------------------------------
# Closed forms against quadrature on S^1 and S^2
def _quadrature(d, kappa):
    """Nodes on S^{d−1} (as points x, through log_prob itself) and weights of the surface measure,
    for integrands that depend on w = μᵀx only: on S¹ the trapezoid rule in the angle (spectrally
    accurate for periodic integrands); on S² Gauss-Legendre in w, whose measure is 2π dw."""
    loc = unit(d, seed=d)
    perp = F.normalize(torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(9)), dim=0)
    perp = F.normalize(perp - (perp @ loc) * loc, dim=0)
    if d == 2:
        n = 4096
        t = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
        w, s = torch.cos(t), torch.sin(t)
        weights = torch.full((n,), 2 * math.pi / n, dtype=torch.float64)
    else:
        nodes, wts = np.polynomial.legendre.leggauss(400)
        w = torch.tensor(nodes)
        s = torch.sqrt(1 - w * w)
        weights = 2 * math.pi * torch.tensor(wts)
    x = w[:, None] * loc + s[:, None] * perp
    return VonMisesFisher(loc, torch.tensor(kappa, dtype=torch.float64)), x, w, weights


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kappa", [0.01, 1.0, 7.5, 60.0])
def test_log_prob_normalised_and_kl_entropy_match_quadrature(d, kappa):
    dist, x, w, weights = _quadrature(d, kappa)
    log_p = dist.log_prob(x)
    p = log_p.exp()
    assert (p * weights).sum().item() == pytest.approx(1.0, abs=1e-10)
    kl = (p * (log_p + log_sphere_area(d)) * weights).sum().item()
    entropy = -(p * log_p * weights).sum().item()
    mean_cos = (p * w * weights).sum().item()
    assert dist.kl_to_uniform().item() == pytest.approx(kl, abs=1e-9, rel=1e-9)
    assert dist.entropy().item() == pytest.approx(entropy, abs=1e-9, rel=1e-9)
    assert dist.mean.norm().item() == pytest.approx(mean_cos, abs=1e-10)
    uniform = HypersphericalUniform(d, dtype=torch.float64)
    torch.testing.assert_close(torch.distributions.kl_divergence(dist, uniform), dist.kl_to_uniform())


def test_kl_limits():
    # κ → 0: the vMF becomes uniform; large κ: ≈ (d−1)/2 (log(κ/2π) − 1) + log|S^{d−1}|
    d = 16
    small = kl_vmf_uniform(d, torch.tensor(1e-4, dtype=torch.float64)).item()
    assert 0 <= small < 1e-8
    k = torch.tensor(1e5, dtype=torch.float64)
    laplace = (d - 1) / 2 * (math.log(k.item() / (2 * math.pi)) - 1) + log_sphere_area(d)
    assert kl_vmf_uniform(d, k).item() == pytest.approx(laplace, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# Sampling
@pytest.mark.parametrize("d,kappa", [(2, 0.3), (3, 5.0), (5, 1e3), (16, 50.0), (64, 1e4), (256, 1.0)])
def test_samples_unit_norm_and_moments(d, kappa):
    n = 20000
    loc = unit(d, seed=1)
    dist = VonMisesFisher(loc, torch.tensor(kappa, dtype=torch.float64))
    x = dist.sample((n,), generator=torch.Generator().manual_seed(2))
    assert x.shape == (n, d)
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-12)
    a = mean_resultant_length(d, torch.tensor(kappa, dtype=torch.float64)).item()
    w = x @ loc
    # E[w] = A_d(κ), E[w²] = 1 − (d−1)A/κ; tolerances: 5 standard errors
    se = math.sqrt(max(1 - a * a, 1e-12) / n)
    assert w.mean().item() == pytest.approx(a, abs=5 * se + 1e-9)
    ew2 = 1 - (d - 1) * a / kappa
    assert (w * w).mean().item() == pytest.approx(ew2, abs=5 * math.sqrt(max(1 - ew2 * ew2, 1e-12) / n) + 1e-9)
    # the tangent part is isotropic: E[xxᵀ] = (A/κ) I + (1 − d·A/κ) μμᵀ, entry by entry within 6
    # standard errors (the entries' variances estimated from the sample itself)
    second = x.T @ x / n
    entry_var = (x * x).T @ (x * x) / n - second * second
    expect = (a / kappa) * torch.eye(d, dtype=torch.float64) + (1 - d * a / kappa) * torch.outer(loc, loc)
    assert ((second - expect).abs() <= 6 * torch.sqrt(entry_var / n) + 1e-12).all()
    # the mean direction: its part orthogonal to μ is the mean of d − 1 coordinates of variance A/κ
    m = x.mean(0)
    perp_sq = (m - (m @ loc) * loc).square().sum().item()
    dof = d - 1
    assert perp_sq <= (a / kappa) / n * (dof + 6 * math.sqrt(2 * dof) + 10)


@pytest.mark.parametrize("d,kappa", [(3, 4.0), (10, 20.0), (40, 3.0)])
def test_cosine_distribution_kolmogorov_smirnov(d, kappa):
    """w = μᵀx has density ∝ e^{κw} (1 − w²)^{(d−3)/2}: compare the sample's CDF with it."""
    grid = np.linspace(-1, 1, 200001)
    log_dens = kappa * grid + (d - 3) / 2 * np.log(np.clip(1 - grid * grid, 1e-300, None))
    dens = np.exp(log_dens - log_dens.max())
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2)])
    cdf /= cdf[-1]
    dist = VonMisesFisher(unit(d, seed=3), torch.tensor(kappa, dtype=torch.float64))
    w = (dist.sample((5000,), generator=torch.Generator().manual_seed(4)) @ dist.loc).numpy()
    assert stats.kstest(w, lambda t: np.interp(t, grid, cdf)).pvalue > 1e-3


def test_batched_parameters_large_kappa_dimension_mix_in_few_host_syncs(monkeypatch):
    """One call samples a batch whose κ span 1e-3..1e5 at d = 64: every κ's mean cosine matches
    A_d(κ), and the rejection rounds run as one or two vectorised batches, not one per round."""
    calls = []
    propose = vmf_module._propose
    monkeypatch.setattr(vmf_module, "_propose", lambda *a, **k: calls.append(a[0].shape[0]) or propose(*a, **k))
    d, n = 64, 2000
    kappas = torch.tensor([1e-3, 0.5, 10.0, 64.0, 300.0, 1e4, 1e5], dtype=torch.float64)
    locs = torch.stack([unit(d, seed=s) for s in range(len(kappas))])
    x = VonMisesFisher(locs, kappas).sample((n,), generator=torch.Generator().manual_seed(5))
    assert x.shape == (n, len(kappas), d)
    assert len(calls) <= 3 and calls[0] == n * len(kappas)
    cos = (x * locs).sum(-1).mean(0)
    a = mean_resultant_length(d, kappas)
    se = torch.sqrt((1 - a * a).clamp_min(1e-12) / n)
    assert ((cos - a).abs() <= 5 * se + 1e-9).all(), (cos, a)


def test_rsample_reproducible_and_differentiable_in_loc():
    d, n, kappa = 5, 40000, 3.0
    theta = torch.tensor([0.3, -1.0, 0.4, 0.2, 0.8], dtype=torch.float64, requires_grad=True)
    loc = F.normalize(theta, dim=0)
    dist = VonMisesFisher(loc, kappa)
    a1 = dist.rsample((n,), generator=torch.Generator().manual_seed(7))
    a2 = dist.rsample((n,), generator=torch.Generator().manual_seed(7))
    a3 = dist.rsample((n,), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    # the pathwise gradient of E[cᵀx] = A·cᵀμ(θ) is unbiased
    c = torch.tensor([1.0, 2.0, -0.5, 0.0, 1.5], dtype=torch.float64)
    (g_mc,) = torch.autograd.grad((a1 @ c).mean(), theta)
    a = mean_resultant_length(d, torch.tensor(kappa, dtype=torch.float64))
    (g_true,) = torch.autograd.grad(a * (F.normalize(theta, dim=0) @ c), theta)
    assert torch.isfinite(g_mc).all() and g_mc.abs().sum() > 0
    torch.testing.assert_close(g_mc, g_true, atol=0.012, rtol=0)
    # loc at ±e₁ (where a plain e₁ − μ reflection breaks down) still maps e₁ to loc smoothly
    for sign in (1.0, -1.0):
        e1 = torch.zeros(d, dtype=torch.float64)
        e1[0] = sign
        x = VonMisesFisher(e1, 1e6).sample((3,), generator=torch.Generator().manual_seed(0))
        assert (x @ e1 > 1 - 1e-4).all()


def test_log_prob_against_scipy_and_shapes():
    d = 4
    locs = torch.stack([unit(d, seed=s) for s in range(3)])
    kappas = torch.tensor([0.5, 4.0, 40.0], dtype=torch.float64)
    dist = VonMisesFisher(locs, kappas)
    assert dist.batch_shape == (3,) and dist.event_shape == (d,)
    x = dist.sample((6,), generator=torch.Generator().manual_seed(1))
    lp = dist.log_prob(x)
    assert lp.shape == (6, 3)
    for j in range(3):
        ref = stats.vonmises_fisher(locs[j].numpy(), kappas[j].item()).logpdf(x[:, j].numpy())
        np.testing.assert_allclose(lp[:, j].numpy(), ref, rtol=1e-10)
    torch.testing.assert_close(dist.mean, mean_resultant_length(d, kappas)[:, None] * locs)
    assert torch.equal(dist.mode, locs)
    # float32 parameters sample and score in float32
    d32 = VonMisesFisher(locs.float(), 4.0)
    s = d32.rsample((2,), generator=torch.Generator().manual_seed(0))
    assert s.dtype == torch.float32 and d32.log_prob(s).dtype == torch.float32


def test_uniform_prior():
    u = HypersphericalUniform(7, batch_shape=(2,), dtype=torch.float64)
    x = u.sample((5,), generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 2, 7)
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(5, 2, dtype=torch.float64))
    torch.testing.assert_close(u.log_prob(x), torch.full((5, 2), -log_sphere_area(7), dtype=torch.float64))
    assert log_sphere_area(3) == pytest.approx(math.log(4 * math.pi))
    with pytest.raises(ValueError, match="dim"):
        HypersphericalUniform(1)


def test_bad_input():
    loc = unit(3, dtype=torch.float32)
    # The value checks follow torch's global validate_args default, which other code may switch
    # off in a long test session; ask for them explicitly here.
    with pytest.raises(ValueError, match="concentration must be > 0"):
        VonMisesFisher(loc, -1.0, validate_args=True)
    with pytest.raises(ValueError, match="concentration must be > 0"):
        VonMisesFisher(loc, torch.tensor(float("nan")), validate_args=True)
    with pytest.raises(ValueError, match="unit vectors"):
        VonMisesFisher(2 * loc, 1.0, validate_args=True)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., d\] with d >= 2"):
        VonMisesFisher(torch.ones(4, 1), 1.0)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., d\] with d >= 2"):
        VonMisesFisher(torch.tensor(1.0), 1.0)
    with pytest.raises(TypeError, match="floating"):
        VonMisesFisher(torch.tensor([1, 0]), 1.0)
    with pytest.raises(TypeError, match="tensor or a number"):
        VonMisesFisher(loc, "3")
    with pytest.raises(ValueError, match="does not broadcast"):
        VonMisesFisher(loc.expand(2, 3), torch.ones(3))
    with pytest.raises(ValueError, match="UnitSphere"):
        VonMisesFisher(loc, 1.0, validate_args=True).log_prob(torch.ones(3))
    # validate_args=False skips the checks (for hot loops)
    VonMisesFisher(2 * loc, 1.0, validate_args=False)


def test_sampling_on_device(device):
    gen = torch.Generator(device=device).manual_seed(0)
    loc = F.normalize(torch.randn(4, 16, device=device), dim=-1)
    dist = VonMisesFisher(loc, torch.full((4,), 30.0, device=device))
    x = dist.rsample((3000,), generator=gen)
    assert x.device.type == torch.device(device).type and x.shape == (3000, 4, 16)
    a = mean_resultant_length(16, torch.tensor(30.0, device=device))
    assert ((x * loc).sum(-1).mean(0) - a).abs().max().item() < 0.02
    assert torch.isfinite(dist.log_prob(x)).all() and dist.kl_to_uniform().device == x.device
