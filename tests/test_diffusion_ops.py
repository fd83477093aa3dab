"""The diffusion ops against their textbook references, the in-kernel noise against its numpy
reference and statistics, and the ODE steps against the exact flow of a Gaussian."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import kexue
from kexue.ops import diffusion as D

from conftest import low_precision_ok

T = 1000


def linear_abar(device="cpu", dtype=torch.float64):
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).to(device=device, dtype=dtype)


def data(shape, device, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for _ in range(3)]


# --- Philox ------------------------------------------------------------------------------------

def test_philox_known_answers():
    # Random123's published known-answer vectors for philox4x32-10.
    zero = D.reference_philox4x32_10(np.zeros((1, 4), np.uint32), (0, 0))[0]
    ones = D.reference_philox4x32_10(np.full((1, 4), 0xFFFFFFFF, np.uint32), (0xFFFFFFFF, 0xFFFFFFFF))[0]
    assert [int(v) for v in zero] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert [int(v) for v in ones] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


@pytest.mark.parametrize("seed,offset,n", [(0, 0, 7), (2**63 + 12345, 2**40 + 3, 1001)])
def test_kernel_noise_equals_numpy_reference(seed, offset, n):
    ours = torch.tensor(kexue._C._philox_normals(seed, offset, n))
    ref = D.reference_philox_normals(seed, offset, n)
    assert ours.shape == (n,)
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=2e-6)


# --- q_sample ----------------------------------------------------------------------------------

@pytest.mark.parametrize("per_sample", [False, True])
def test_q_sample_matches_reference(device, per_sample):
    x0, noise, _ = data((5, 3, 4), device)
    ab = torch.rand(5, dtype=torch.float64, device=device) if per_sample else 0.37
    torch.testing.assert_close(D.q_sample(x0, noise, ab), D.reference_q_sample(x0, noise, ab), rtol=1e-14, atol=1e-14)


def test_q_sample_gradcheck(device):
    x0, noise, _ = data((4, 3), device)
    ab = torch.tensor([0.2, 0.5, 0.9, 0.99], dtype=torch.float64, device=device)
    args = [t.requires_grad_() for t in (x0, noise, ab)]
    assert torch.autograd.gradcheck(D.q_sample, args)
    scalar = torch.tensor(0.4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: D.q_sample(a, b, c), (args[0], args[1], scalar))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(6, 257), (1000, 2)])  # (1000, 2): runs of small samples (2-D points)
def test_q_sample_low_precision(device, dtype, shape):
    x0, noise, _ = data(shape, device)
    ab = torch.rand(shape[0], dtype=torch.float64, device=device)
    hi = D.reference_q_sample(x0, noise, ab)
    ours = D.q_sample(x0.to(dtype), noise.to(dtype), ab)
    low = D.reference_q_sample(x0.to(dtype), noise.to(dtype), ab)
    ok, info = low_precision_ok(ours, low, hi)
    assert ok, info


# --- the steps ---------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [0, 1, 500, 999, "per-sample"])
@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ddpm_step_matches_reference(device, t, variance, clip):
    x, eps, z = data((8, 2, 3), device)
    ac = linear_abar(device)
    if t == "per-sample":
        t = torch.tensor([0, 1, 2, 10, 500, 998, 999, 400], device=device)
    ours = D.ddpm_step(x, eps, t, ac, noise=z, variance=variance, clip_x0=clip)
    ref = D.reference_ddpm_step(x, eps, t, ac, z, variance=variance, clip_x0=clip)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("per_sample", [False, True])
def test_ddim_step_matches_reference(device, eta, clip, per_sample):
    x, eps, z = data((6, 5), device)
    if per_sample:
        ab = torch.linspace(0.05, 0.9, 6, dtype=torch.float64, device=device)
        ab_prev = (ab + 0.05).clamp(max=1.0)
    else:
        ab, ab_prev = 0.3, 0.55
    noise = dict(noise=z) if eta > 0 else {}
    ours, x0 = D.ddim_step(x, eps, ab, ab_prev, eta=eta, clip_x0=clip, return_x0=True, **noise)
    ref = D.reference_ddim_step(x, eps, ab, ab_prev, eta=eta, noise=z, clip_x0=clip)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ab_col = D._column(ab, x)
    torch.testing.assert_close(x0, D._x0_pred(x, eps, ab_col, clip), rtol=1e-12, atol=1e-12)


def test_ddim_eta_one_on_adjacent_steps_is_ddpm_beta_tilde(device):
    x, eps, z = data((4, 9), device)
    ac = linear_abar(device)
    for t in (1, 300, 999):
        ddim = D.ddim_step(x, eps, ac[t], ac[t - 1], eta=1.0, noise=z)
        ddpm = D.ddpm_step(x, eps, t, ac, noise=z, variance="beta_tilde")
        torch.testing.assert_close(ddim, ddpm, rtol=1e-12, atol=1e-12)


def test_ddim_eta_zero_is_deterministic(device):
    x, eps, _ = data((4, 9), device)
    a = D.ddim_step(x, eps, 0.2, 0.7)
    b = D.ddim_step(x, eps, 0.2, 0.7)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_steps_low_precision(device, dtype):
    x, eps, z = data((3, 1031), device)
    ac = linear_abar(device)
    t3 = torch.tensor([3, 400, 999], device=device)
    ab3 = torch.tensor([0.2, 0.5, 0.85], dtype=torch.float64, device=device)
    t1 = torch.tensor(650, device=device)
    cases = [
        (lambda a, b, c: D.ddpm_step(a, b, 700, ac, noise=c, clip_x0=1.0),
         lambda a, b, c: D.reference_ddpm_step(a, b, 700, ac, c, clip_x0=1.0)),
        (lambda a, b, c: D.ddim_step(a, b, 0.3, 0.5, eta=0.5, noise=c),
         lambda a, b, c: D.reference_ddim_step(a, b, 0.3, 0.5, eta=0.5, noise=c)),
        (lambda a, b, c: D.ode_heun_step(a, b, c, 0.3, 0.5),
         lambda a, b, c: D.reference_ode_heun_step(a, b, c, 0.3, 0.5)),
        # per-sample t and ᾱ: the GPU's per-sample coefficient table (float for 16-bit data)
        (lambda a, b, c: D.ddpm_step(a, b, t3, ac, noise=c),
         lambda a, b, c: D.reference_ddpm_step(a, b, t3, ac, c)),
        (lambda a, b, c: D.ddim_step(a, b, ab3, ab3 + 0.1, eta=0.5, noise=c),
         lambda a, b, c: D.reference_ddim_step(a, b, ab3, ab3 + 0.1, eta=0.5, noise=c)),
        # a one-element t tensor (a sampling loop's step index): uniform, no per-sample table
        (lambda a, b, c: D.ddpm_step(a, b, t1, ac, noise=c),
         lambda a, b, c: D.reference_ddpm_step(a, b, t1, ac, c)),
    ]
    for ours_fn, ref_fn in cases:
        hi = ref_fn(x, eps, z)
        low = [t.to(dtype) for t in (x, eps, z)]
        ok, info = low_precision_ok(ours_fn(*low), ref_fn(*low), hi)
        assert ok, info


def test_odd_sizes_and_offsets(device):
    # Groups of 4 that straddle samples, a storage offset that breaks vector alignment.
    base = torch.randn(7 * 5 + 1, dtype=torch.float32, device=device)
    x = base[1:].view(7, 5)
    eps = torch.randn(7, 5, device=device)
    ab = torch.rand(7, device=device) * 0.9 + 0.05
    ours = D.ddim_step(x, eps, ab, (ab + 0.04).clamp(max=1))
    ref = D.reference_ddim_step(x, eps, ab, (ab + 0.04).clamp(max=1))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_empty_batch(device):
    x = torch.empty(0, 3, device=device)
    assert D.ddpm_step(x, x, 5, linear_abar(device), noise=x).shape == (0, 3)
    assert D.q_sample(x, x, 0.5).shape == (0, 3)


# --- in-kernel noise ---------------------------------------------------------------------------

def _noise_of(device, gen=None, shape=(2048, 64), isa=None):
    """The z a DDPM step draws: with x_t = eps = 0 the step is σ_t·z."""
    ac = linear_abar(device, torch.float32)
    zeros = torch.zeros(shape, device=device)
    out = D.ddpm_step(zeros, zeros, 500, ac, generator=gen)
    return out / (1 - ac[500] / ac[499]).sqrt()


def test_in_kernel_noise_statistics(device):
    z = _noise_of(device, torch.Generator(device=device).manual_seed(3)).double().flatten()
    n = z.numel()
    # 6-sigma bounds: mean ~ N(0, 1/n), variance ~ N(1, 2/n), kurtosis 3 ± sqrt(96/n).
    assert abs(z.mean().item()) < 6 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 6 * math.sqrt(2 / n)
    assert abs((z**4).mean().item() - 3) < 6 * math.sqrt(96 / n)
    # Neighbours (same Philox block and across blocks) are uncorrelated.
    for lag in (1, 2, 4):
        corr = (z[:-lag] * z[lag:]).mean().item()
        assert abs(corr) < 6 / math.sqrt(n)


def test_in_kernel_noise_reproducible_and_advancing(device):
    a = _noise_of(device, torch.Generator(device=device).manual_seed(11))
    b = _noise_of(device, torch.Generator(device=device).manual_seed(11))
    assert torch.equal(a, b)
    g = torch.Generator(device=device).manual_seed(11)
    first, second = _noise_of(device, g), _noise_of(device, g)
    assert not torch.equal(first, second)
    torch.manual_seed(5)
    c = _noise_of(device)
    torch.manual_seed(5)
    assert torch.equal(c, _noise_of(device))


def test_in_kernel_noise_same_on_every_cpu_isa(restore_cpu_isa):
    results = []
    for isa in kexue._C.cpu_isas():
        kexue._C.set_cpu_isa(isa)
        results.append(_noise_of("cpu", torch.Generator().manual_seed(2), shape=(33, 29)))
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-5, atol=1e-5)


def test_ddim_without_noise_leaves_generator_alone():
    g = torch.Generator().manual_seed(0)
    before = g.get_state().clone()
    x = torch.randn(3, 4)
    D.ddim_step(x, x, 0.3, 0.5)  # eta = 0 draws nothing
    assert torch.equal(g.get_state(), before)


# --- the probability-flow ODE ------------------------------------------------------------------

def _gaussian_flow(v, steps, heun, x_start, ab_grid):
    """Integrate the PF ODE of x0 ~ N(0, v·I), whose exact ε-prediction is
    √(1−ᾱ)·x/(ᾱv + 1 − ᾱ), with Euler or Heun along the ᾱ grid."""
    def eps_fn(x, ab):
        return math.sqrt(1 - ab) * x / (ab * v + 1 - ab)

    x = x_start
    for ab, ab_next in zip(ab_grid[:-1], ab_grid[1:]):
        e = eps_fn(x, ab)
        x_euler = D.ode_euler_step(x, e, ab, ab_next)
        x = D.ode_heun_step(x, e, eps_fn(x_euler, ab_next), ab, ab_next) if heun else x_euler
    return x


def test_ode_steps_converge_to_the_exact_flow(device):
    v = 0.25
    x_start = torch.randn(64, 2, dtype=torch.float64, device=device)
    ab0, ab1 = 0.01, 0.999

    def exact(x):  # x̄ = x/√ᾱ scales by √((v+σ1²)/(v+σ0²)), σ² = (1−ᾱ)/ᾱ
        s0, s1 = (1 - ab0) / ab0, (1 - ab1) / ab1
        return x / math.sqrt(ab0) * math.sqrt((v + s1) / (v + s0)) * math.sqrt(ab1)

    def err(steps, heun):
        grid = np.linspace(ab0, ab1, steps + 1).tolist()
        return (_gaussian_flow(v, steps, heun, x_start, grid) - exact(x_start)).abs().max().item()

    e_euler = [err(n, False) for n in (25, 50, 100, 400)]
    e_heun = [err(n, True) for n in (25, 50, 100)]
    assert e_euler[0] > e_euler[1] > e_euler[2] > e_euler[3]
    assert e_euler[1] / e_euler[2] == pytest.approx(2, rel=0.25)  # first order
    assert e_heun[1] / e_heun[2] == pytest.approx(4, rel=0.3)  # second order
    assert e_heun[1] < e_euler[-1]  # 50 Heun steps (100 evaluations) beat 400 Euler steps
    # Euler with many steps approaches Heun.
    grid_fine = np.linspace(ab0, ab1, 4001).tolist()
    grid = np.linspace(ab0, ab1, 101).tolist()
    fine = _gaussian_flow(v, 4000, False, x_start, grid_fine)
    heun = _gaussian_flow(v, 100, True, x_start, grid)
    assert (fine - heun).abs().max().item() < 0.1 * e_euler[2]


# --- operator checks ---------------------------------------------------------------------------

def test_opcheck(device):
    x, eps, z = data((3, 4), device)
    ac = linear_abar(device)
    ab = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64, device=device)
    host = torch.tensor(0.5, dtype=torch.float64)
    cases = [
        (torch.ops.kexue.q_sample, (x.clone().requires_grad_(), z, ab)),
        (torch.ops.kexue.ddpm_step, (x, eps, torch.tensor(7), ac, z, None, "beta_tilde", 1.0, True)),
        (torch.ops.kexue.ddpm_step, (x, eps, torch.tensor([0, 5, 9], device=device), ac, z, None, "beta", None, False)),
        (torch.ops.kexue.ddim_step, (x, eps, ab, host, 0.5, z, None, None, True)),
        (torch.ops.kexue.ode_step, (x, eps, host, ab, z)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_compile_fullgraph():
    ac = linear_abar()

    def f(x, eps, z, ab):
        y = D.q_sample(x, z, ab)
        y = D.ddpm_step(y, eps, 10, ac, noise=z, clip_x0=1.0)
        y = D.ddim_step(y, eps, 0.3, 0.5, eta=0.2, noise=z)
        return D.ode_heun_step(y, eps, z, 0.5, 0.6)

    x, eps, z = data((4, 6), "cpu")
    ab = torch.rand(4, dtype=torch.float64)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, eps, z, ab), f(x, eps, z, ab))


# --- bad input ---------------------------------------------------------------------------------

def test_bad_inputs():
    x = torch.randn(3, 4)
    ac = linear_abar(dtype=torch.float32)
    cases = [
        (lambda: D.ddpm_step(x, x, 1000, ac), "t must be in \\[0, 1000\\)"),
        (lambda: D.ddpm_step(x, x, -1, ac), "t must be in"),
        (lambda: D.ddpm_step(x, x, torch.tensor([0, 1, 1000]), ac), "t must be in"),
        (lambda: D.ddpm_step(x, x, torch.tensor([0, 1]), ac), "one value or one per sample"),
        (lambda: D.ddpm_step(x, x, 1, ac.view(10, 100)), "alphas_cumprod must be 1-D"),
        (lambda: D.ddpm_step(x, x, 1, -ac), "alphas_cumprod must lie in"),
        (lambda: D.ddpm_step(x, x, torch.tensor(1.0), ac), "t must hold integer"),
        (lambda: D.ddpm_step(x, x[:, :3], 1, ac), "eps must have the shape of x_t"),
        (lambda: D.ddpm_step(x, x.double(), 1, ac), "eps must have dtype"),
        (lambda: D.ddpm_step(x, x, 1, ac, variance="sigma"), "variance must be"),
        (lambda: D.ddpm_step(x, x, 1, ac, noise=x, generator=torch.Generator()), "either noise or generator"),
        (lambda: D.ddpm_step(x, x, 1, ac, noise=x[:2]), "noise must have the shape"),
        (lambda: D.ddpm_step(x, x, 1, ac, clip_x0=0.0), "clip_x0 must be positive"),
        (lambda: D.ddim_step(x, x, 1.5, 0.5), "alpha_bar_t must be in \\(0, 1\\]"),
        (lambda: D.ddim_step(x, x, 0.5, 0.0), "alpha_bar_prev must be in"),
        (lambda: D.ddim_step(x, x, 0.5, 0.6, eta=-1.0), "eta must be >= 0"),
        (lambda: D.ddim_step(x, x, 0.5, 0.6, noise=x), "eta = 0 is deterministic"),
        (lambda: D.ddim_step(x, x, torch.rand(2), 0.6), "one value or one per sample"),
        (lambda: D.ode_heun_step(x, x, x[:1], 0.5, 0.6), "eps_next must have the shape"),
        (lambda: D.q_sample(x.long(), x.long(), 0.5), "x0 must be float32"),
        (lambda: D.q_sample(x, x, torch.tensor([0.5, 1.2, 0.1])), "alpha_bar must be in \\[0, 1\\]"),
        (lambda: D.q_sample(x, x, "0.5"), "alpha_bar must be a float or a tensor"),
        (lambda: D.ddpm_step(x, x, 1.0, ac), "t must be an int"),
    ]
    for fn, msg in cases:
        with pytest.raises((RuntimeError, TypeError, ValueError), match=msg):
            fn()


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 6), n=st.integers(1, 70), t=st.integers(0, T - 1), clip=st.sampled_from([None, 0.5, 3.0]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_hypothesis_ddpm_against_reference(b, n, t, clip, dtype):
    x, eps, z = data((b, n), "cpu", dtype, seed=b * 100 + n)
    ac = linear_abar()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    ours = D.ddpm_step(x, eps, t, ac, noise=z, clip_x0=clip)
    truth = D.reference_ddpm_step(x.double(), eps.double(), t, ac, z.double(), clip_x0=clip)
    torch.testing.assert_close(ours.double(), truth, rtol=tol, atol=tol)


@pytest.mark.parametrize("flush", [False, True])
def test_zero_alpha_bar_is_refused_with_or_without_flushed_denormals(flush):
    # The per-sample ᾱ check compares with 0 itself: with denormals flushed to zero, a denormal
    # bound would have let ᾱ = 0 through (and √0 into a division).
    x = torch.randn(2, 3)
    if not torch.set_flush_denormal(flush):
        pytest.skip("this CPU cannot flush denormals")
    try:
        for zero in (0.0, -0.0):
            ab = torch.tensor([0.5, zero], dtype=torch.float64)
            with pytest.raises(RuntimeError, match="alpha_bar_t must be in"):
                D.ddim_step(x, x, ab, 0.5)
        assert torch.isfinite(D.q_sample(x, x, torch.tensor([0.5, 0.0], dtype=torch.float64))).all()
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("flush", [False, True])
def test_per_sample_alpha_bar_out_of_range_anywhere_is_refused(flush):
    # The range check runs over the whole [batch] tensor: a bad value at any position, first,
    # inside or last, is refused; ᾱ = 0 only where zero is allowed (q_sample), and values just
    # inside the range pass.
    n = 17
    x = torch.randn(n, 3)
    if not torch.set_flush_denormal(flush):
        pytest.skip("this CPU cannot flush denormals")
    try:
        for bad in (float("nan"), -0.1, 1 + 1e-12, float("inf"), -float("inf")):
            for pos in (0, 7, n - 1):
                ab = torch.full((n,), 0.5, dtype=torch.float64)
                ab[pos] = bad
                with pytest.raises(RuntimeError, match="alpha_bar_t must be in"):
                    D.ddim_step(x, x, ab, 0.5)
                with pytest.raises(RuntimeError, match="alpha_bar must be in"):
                    D.q_sample(x, x, ab)
        edge = torch.full((n,), 0.5, dtype=torch.float64)
        edge[3], edge[n - 1] = 1.0, 1e-6
        assert torch.isfinite(D.ddim_step(x, x, edge, 0.5)).all()
        edge[5] = 0.0
        assert torch.isfinite(D.q_sample(x, x, edge)).all()
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_repeated_per_sample_value_runs_as_one_and_changes_nothing(dtype):
    # A [batch] ᾱ or t of one repeated value (torch.full((B,), t) in a sampling loop) runs as the
    # one-value case on the CPU: the same outputs as the scalar call, noise included. With one
    # sample different, the others still get exactly those outputs (the per-sample path).
    B, n = 37, 3
    x, eps, z = data((B, n), "cpu", dtype)
    ac = linear_abar()

    def gen():
        return torch.Generator().manual_seed(5)

    def with_last(value, last):
        v = torch.full((B,), value, dtype=torch.float64)
        v[-1] = last
        return v

    cases = [
        (lambda ab, abp: D.ddim_step(x, eps, ab, abp, eta=1.0, generator=gen()), 0.3, 0.55, 0.8),
        (lambda ab, abp: D.ddim_step(x, eps, ab, abp, clip_x0=1.0, return_x0=True), 0.3, 0.55, 0.8),
        (lambda ab, abp: D.ode_euler_step(x, eps, ab, abp), 0.3, 0.55, 0.8),
        (lambda ab, abp: D.q_sample(x, eps, ab), 0.3, None, 0.8),
    ]
    for fn, ab, abp, other in cases:
        scalar = fn(ab, abp)
        repeated = fn(torch.full((B,), ab, dtype=torch.float64),
                      None if abp is None else torch.full((B,), abp, dtype=torch.float64))
        mixed = fn(with_last(ab, other), None if abp is None else torch.full((B,), abp, dtype=torch.float64))
        scalar, repeated, mixed = (t if isinstance(t, tuple) else (t,) for t in (scalar, repeated, mixed))
        for s, r, m in zip(scalar, repeated, mixed):
            assert torch.equal(s, r)
            assert torch.equal(s[:-1], m[:-1])
            assert not torch.equal(s[-1], m[-1])
    t = torch.full((B,), 500)
    t_mixed = t.clone()
    t_mixed[-1] = 20
    scalar = D.ddpm_step(x, eps, 500, ac, generator=gen())
    assert torch.equal(D.ddpm_step(x, eps, t, ac, generator=gen()), scalar)
    mixed = D.ddpm_step(x, eps, t_mixed, ac, generator=gen())
    assert torch.equal(mixed[:-1], scalar[:-1]) and not torch.equal(mixed[-1], scalar[-1])
