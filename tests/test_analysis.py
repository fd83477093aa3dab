"""kexue.analysis: non-square volume, the spinning-rope curve, unargmaxable softmax classes."""
import math

import numpy as np
import pytest
import torch

from kexue.analysis import (
    jump_rope_curve,
    log_volume,
    plot_jump_rope,
    reference_argmaxable,
    reference_volume,
    taut_rope_sine,
    unargmaxable,
    volume,
)

# ----------------------------------------------------------------------------- volume


def test_volume_is_the_product_of_singular_values(device):
    g = torch.Generator().manual_seed(0)
    b = torch.randn(3, 2, 7, 4, generator=g, dtype=torch.float64).to(device)
    v = volume(b)
    assert v.shape == (3, 2)
    torch.testing.assert_close(v, torch.linalg.svdvals(b).prod(-1))
    torch.testing.assert_close(v, reference_volume(b))
    torch.testing.assert_close(log_volume(b), v.log())
    square = torch.randn(5, 5, generator=g, dtype=torch.float64).to(device)
    torch.testing.assert_close(volume(square), torch.linalg.det(square).abs())
    # one column: its length; k columns of an orthonormal frame scaled by c: c^k
    col = torch.randn(9, 1, generator=g, dtype=torch.float64)
    torch.testing.assert_close(volume(col), col.norm())
    q = torch.linalg.qr(torch.randn(9, 3, generator=g, dtype=torch.float64))[0]
    torch.testing.assert_close(volume(2.5 * q), torch.tensor(2.5**3, dtype=torch.float64))


def test_log_volume_gradient_matches_the_gram_formula():
    g = torch.Generator().manual_seed(1)
    b = torch.randn(2, 8, 3, generator=g, dtype=torch.float64, requires_grad=True)
    (ours,) = torch.autograd.grad(log_volume(b).sum(), b)
    (dense,) = torch.autograd.grad((0.5 * torch.logdet(b.transpose(-1, -2) @ b)).sum(), b)
    torch.testing.assert_close(ours, dense)
    # d log vol / dB = (B⁺)ᵀ
    torch.testing.assert_close(ours, torch.linalg.pinv(b.detach()).transpose(-1, -2))
    small = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(log_volume, (small,))
    assert torch.autograd.gradcheck(volume, (small,))


def test_dependent_columns_and_low_precision():
    b = torch.randn(6, 3, dtype=torch.float64)
    b[:, 2] = b[:, 0] - 2 * b[:, 1]
    assert float(volume(b)) < 1e-12
    assert float(log_volume(b)) < -25
    b.requires_grad_(True)
    volume(b).backward()
    assert torch.isfinite(b.grad).all()
    half = torch.randn(6, 3).to(torch.bfloat16)
    assert volume(half).dtype == torch.float32
    torch.testing.assert_close(volume(half), volume(half.float()))


def test_volume_bad_input():
    with pytest.raises(ValueError, match="n >= k"):
        volume(torch.randn(2, 3))
    with pytest.raises(ValueError, match="n >= k"):
        log_volume(torch.randn(4, 2, 3))
    with pytest.raises(ValueError, match=r"\[\.\.\., n, k\]"):
        volume(torch.randn(3))
    with pytest.raises(TypeError, match="floating point"):
        volume(torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="tensor"):
        volume([[1.0, 0.0], [0.0, 1.0]])


# ----------------------------------------------------------------------------- jump rope


def derivative(f, s):
    return np.gradient(f, s, edge_order=2)


def test_rope_solves_its_equations_and_constraints():
    rho, omega, g, ell, d = 0.3, 7.0, 9.81, 1.6, 1.0
    for gravity in (0.0, g):
        c = jump_rope_curve(ell, d, omega, gravity=gravity, density=rho, n_points=4001)
        s = c.s
        # boundary conditions and length
        assert abs(c.x[0]) < 1e-10 and abs(c.y[0]) < 1e-10
        assert abs(c.x[-1] - d) < 1e-8 and abs(c.y[-1]) < 1e-8
        assert abs(np.hypot(np.diff(c.x), np.diff(c.y)).sum() - ell) < 1e-6 * ell
        # inextensible: |dr/ds| = 1
        dx, dy = derivative(c.x, s), derivative(c.y, s)
        assert np.abs(np.hypot(dx, dy) - 1).max() < 1e-5
        # d(T τ)/ds + ρ(g, ω² y) = 0, relative to the force scale ρω²ℓ
        force = rho * omega**2 * ell
        res_x = derivative(c.tension * dx, s) + rho * gravity
        res_y = derivative(c.tension * dy, s) + rho * omega**2 * c.y
        assert np.abs(res_x[2:-2]).max() < 1e-4 * force
        assert np.abs(res_y[2:-2]).max() < 1e-4 * force
        # energy-like first integral: T + ρ g x + ρ ω² y²/2 is constant along the rope
        invariant = c.tension + rho * gravity * c.x + 0.5 * rho * omega**2 * c.y**2
        assert np.ptp(invariant) < 1e-6 * invariant.mean()
        assert (c.y >= -1e-12).all() and c.max_height > 0 and c.residual < 1e-6


def test_gravity_free_rope_obeys_the_graph_equation_and_is_symmetric():
    c = jump_rope_curve(2.0, 1.0, 3.0, n_points=4001)
    s = c.s
    dx, dy = derivative(c.x, s), derivative(c.y, s)
    slope = dy / dx
    curvature = derivative(slope, s) / dx  # y''(x)
    # H y'' = −ρ ω² y √(1 + y'²), i.e. y'' = −κ y √(1 + y'²)
    residual = curvature + c.kappa * c.y * np.sqrt(1 + slope**2)
    assert np.abs(residual[5:-5]).max() < 1e-3 * np.abs(curvature).max()
    # the first integral √(1 + y'²) = 1 + κ(h² − y²)/2
    assert np.abs(np.sqrt(1 + slope**2) - (1 + 0.5 * c.kappa * (c.max_height**2 - c.y**2))).max() < 1e-5
    np.testing.assert_allclose(c.y[::-1], c.y, atol=1e-9)
    np.testing.assert_allclose(c.x[::-1], 1.0 - c.x, atol=1e-9)
    assert c.end_tensions[0] == pytest.approx(c.end_tensions[1], rel=1e-9)


def test_shape_depends_on_length_ratio_only_and_tension_scales_with_omega_squared():
    slow = jump_rope_curve(3.0, 2.0, 1.0, density=0.5)
    fast = jump_rope_curve(3.0, 2.0, 10.0, density=0.5)
    np.testing.assert_allclose(fast.x, slow.x, atol=1e-9)
    np.testing.assert_allclose(fast.y, slow.y, atol=1e-9)
    np.testing.assert_allclose(fast.tension, 100 * slow.tension, rtol=1e-7)
    # scaling all lengths by 2 scales the curve by 2 (and the tension by 4)
    double = jump_rope_curve(6.0, 4.0, 1.0, density=0.5)
    np.testing.assert_allclose(double.y, 2 * slow.y, atol=1e-8)
    np.testing.assert_allclose(double.tension, 4 * slow.tension, rtol=1e-7)


def test_nearly_taut_rope_is_a_sine():
    errors = []
    for slack in (1e-3, 1e-4):
        c = jump_rope_curve(1.0 + slack, 1.0, 5.0)
        sine = taut_rope_sine(c.x, c.length, c.separation)
        errors.append(np.abs(c.y - sine).max() / sine.max())
    assert errors[1] < 2e-4 and errors[1] < errors[0] / 5  # O(slack) convergence
    # κ → (π/d)²: the sine's wavenumber
    assert jump_rope_curve(1.0001, 1.0, 5.0).kappa == pytest.approx(math.pi**2, rel=1e-3)


def test_fast_spin_removes_the_effect_of_gravity():
    free = jump_rope_curve(1.5, 1.0, 5.0)
    gaps = [np.abs(jump_rope_curve(1.5, 1.0, w, gravity=9.81).y - free.y).max() for w in (6.0, 60.0)]
    assert gaps[1] < gaps[0] / 50 and gaps[1] < 1e-3  # the effect goes as g/(ω²ℓ)
    # with gravity the rope hangs towards +x: the tension is larger at the first end
    pole = jump_rope_curve(1.5, 1.0, 6.0, gravity=9.81)
    assert pole.end_tensions[0] > pole.end_tensions[1]
    assert math.isnan(pole.kappa)


def test_plot_and_bad_input(tmp_path):
    curves = [jump_rope_curve(r, 1.0, 2.0) for r in (1.2, 2.0)]
    path = plot_jump_rope(curves, tmp_path / "rope.png")
    assert path.exists() and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="longer than the separation"):
        jump_rope_curve(1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="longer than the separation"):
        jump_rope_curve(1.0, 2.0, 1.0)
    with pytest.raises(ValueError, match="omega must be a positive"):
        jump_rope_curve(2.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="length must be a positive"):
        jump_rope_curve(float("nan"), 1.0, 1.0)
    with pytest.raises(ValueError, match="gravity must be a finite"):
        jump_rope_curve(2.0, 1.0, 1.0, gravity=float("inf"))
    with pytest.raises(ValueError, match="n_points"):
        jump_rope_curve(2.0, 1.0, 1.0, n_points=2)
    with pytest.raises(ValueError, match="at least one curve"):
        plot_jump_rope([], tmp_path / "none.png")
    with pytest.raises(RuntimeError, match="spin faster"):
        jump_rope_curve(1.2, 1.0, 1.0, gravity=1.2)  # g/(ω²ℓ) = 1: the rope cannot stay taut


# ----------------------------------------------------------------------------- unargmaxable


def assert_witnesses_win(w, b, res):
    """Every class reported argmaxable strictly wins at its witness (float64 logits)."""
    w64 = w.double().cpu()
    b64 = torch.zeros(w.shape[0], dtype=torch.float64) if b is None else b.double().cpu()
    arg = res.argmaxable.cpu()
    ids = torch.nonzero(arg).flatten()
    logits = res.witnesses.cpu()[ids] @ w64.t() + b64
    own = logits[torch.arange(len(ids)), ids]
    logits[torch.arange(len(ids)), ids] = -float("inf")
    assert (own > logits.max(1).values).all()
    assert (res.margins.cpu()[arg] > 0).all() and (res.margins.cpu()[~arg] == 0).all()
    assert torch.isnan(res.witnesses.cpu()[~arg]).all()


def sphere(v, d, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(v, d, generator=g, dtype=torch.float64)
    return w / w.norm(dim=1, keepdim=True), g


def test_planted_interior_rows_are_found_and_vertices_are_not(device):
    w, g = sphere(60, 3, 0)  # every point of a sphere is a vertex of the hull
    planted = [5, 17, 42]
    for k in planted:
        lam = torch.softmax(torch.randn(4, generator=g, dtype=torch.float64), 0)
        w[k] = lam @ w[[k + 1, k + 2, k + 3, k + 4]]
    res = unargmaxable(w.to(device))
    assert res.unargmaxable.tolist() == planted
    assert res.n_lp >= len(planted)
    assert_witnesses_win(w, None, res)


def test_bias_decides_a_middle_class_and_far_regions_are_found():
    w = torch.tensor([[0.0], [1.0], [2.0]])
    # class 1 wins where x + b1 > 0 and x + b1 > 2x, i.e. −b1 < x < b1: only for b1 > 0
    assert unargmaxable(w).unargmaxable.tolist() == [1]
    assert unargmaxable(w, torch.tensor([0.0, -0.1, 0.0])).unargmaxable.tolist() == [1]
    assert unargmaxable(w, torch.tensor([0.0, 0.0, 0.0])).unargmaxable.tolist() == [1]  # ties never win
    res = unargmaxable(w, torch.tensor([0.0, 0.1, 0.0]))
    assert res.unargmaxable.tolist() == [] and abs(float(res.witnesses[1, 0])) < 0.1
    # class 1 wins only on 1e6 < x < 2e6: a box |x| ≤ R on the raw problem would need R > 1e6
    b = torch.tensor([0.0, -1e6, -3e6], dtype=torch.float64)
    res = unargmaxable(w.double(), b)
    assert res.unargmaxable.tolist() == []
    assert 1e6 < float(res.witnesses[1, 0]) < 2e6
    assert_witnesses_win(w, b, res)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("d", [2, 3])
def test_agrees_with_the_full_lp_and_with_sampling(with_bias, d):
    g = torch.Generator().manual_seed(d + 10 * with_bias)
    v = 40
    w = torch.randn(v, d, generator=g, dtype=torch.float64) * (0.5 + torch.rand(v, 1, generator=g, dtype=torch.float64))
    b = torch.randn(v, generator=g, dtype=torch.float64) if with_bias else None
    res = unargmaxable(w, b)
    torch.testing.assert_close(res.argmaxable, reference_argmaxable(w, b))
    assert 0 < res.unargmaxable.numel() < v  # a mixed case
    assert_witnesses_win(w, b, res)
    # brute force: any class that wins at a sampled input must be reported argmaxable
    x = torch.randn(20000, d, generator=g, dtype=torch.float64) * torch.logspace(-2, 2, 20000, dtype=torch.float64)[:, None]
    logits = x @ w.t() + (0 if b is None else b)
    winners = torch.unique(logits.argmax(1))
    assert res.argmaxable[winners].all()
    # without the relaxation stage the answer is the same
    torch.testing.assert_close(unargmaxable(w, b, relaxation_steps=0).argmaxable, res.argmaxable)


def test_prefilter_proves_generic_heads_without_lp():
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(500, 32, generator=g), torch.randn(500, generator=g)
    for bias in (None, b):
        res = unargmaxable(w, bias)
        assert res.unargmaxable.numel() == 0 and res.n_lp == 0
        assert (res.stage <= 1).all()
        assert_witnesses_win(w, bias, res)


def test_duplicates_single_class_and_bad_input():
    w, _ = sphere(10, 3, 1)
    w[4] = w[7]
    assert unargmaxable(w).unargmaxable.tolist() == [4, 7]  # an exact tie is never a strict win
    one = unargmaxable(torch.randn(1, 3))
    assert one.unargmaxable.numel() == 0 and one.argmaxable.tolist() == [True]
    with pytest.raises(ValueError, match=r"\[V >= 1, d >= 1\]"):
        unargmaxable(torch.randn(5))
    with pytest.raises(ValueError, match=r"bias b of shape \[5\]"):
        unargmaxable(torch.randn(5, 2), torch.randn(4))
    with pytest.raises(ValueError, match="NaN"):
        unargmaxable(torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))
    with pytest.raises(TypeError, match="floating point"):
        unargmaxable(torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="tol"):
        unargmaxable(torch.randn(3, 2), tol=-1.0)
    with pytest.raises(ValueError, match="relaxation_steps"):
        unargmaxable(torch.randn(3, 2), relaxation_steps=-1)
