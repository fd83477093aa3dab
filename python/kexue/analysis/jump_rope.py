"""The shape of a rope spinning about the axis through its two ends (post 你跳绳的时候，想过绳子的
形状曲线是怎样的吗？): a skipping rope turned fast, or a rope tied at two points of a spinning
vertical pole (the post's starting problem, where gravity acts along the axis).

Model
-----
The rope (length ℓ, linear density ρ, inextensible, perfectly flexible) turns rigidly at angular
speed ω about the x axis, its ends fixed at (0, 0) and (d, 0), d < ℓ. In the co-rotating plane
through the rope, y ≥ 0 is the distance from the axis, and each element ds feels the centrifugal
force ρω²y ds (along +y) and gravity ρg ds along the axis (+x; g = 0 for a skipping rope, whose
spin is fast enough to neglect it, as in the post). With s the arc length, τ = (dx/ds, dy/ds) the
unit tangent and T(s) the tension, equilibrium of an element is

    d(T τ)/ds + ρ (g, ω² y) = 0,

so the axial tension T·dx/ds falls linearly (−ρg per unit length) and d(T dy/ds)/ds = −ρω²y.
For g = 0 the axial tension is a constant H, and with y(x) a graph this is the post's equation

    H y'' = −ρ ω² y √(1 + y'²),

whose first integral √(1 + y'²) = 1 + (ρω²/2H)(h² − y²) (h: the height in the middle) gives the
Jacobi-elliptic "skipping-rope curve"; for a nearly taut rope it is the sine y ≈ A sin(πx/d)
with A = (2d/π)√(ℓ/d − 1). In general T + ρgx + ρω²y²/2 is constant along the rope.

Non-dimensionalisation
----------------------
Lengths in units of ℓ (σ = s/ℓ ∈ [0, 1], X = x/ℓ, Y = y/ℓ) and forces in units of ρω²ℓ²
((P, Q) = T τ / ρω²ℓ²) turn the equations into

    X' = P/√(P²+Q²),  Y' = Q/√(P²+Q²),  P' = −γ,  Q' = −Y,    X(0)=Y(0)=0, X(1)=r, Y(1)=0,

with only two parameters: r = d/ℓ ∈ (0, 1) and γ = g/(ω²ℓ). So the *shape* of a skipping rope
(γ = 0) depends on ℓ/d alone — ω and ρ only scale the tension, ∝ ρω²ℓ² — and spinning faster
(γ → 0) takes a rope on a vertical pole to the skipping-rope shape.

Solution
--------
For γ = 0 the problem is symmetric and scale-free: integrating from the top of the arc
(y = h, dy/dx = 0) down to the axis with the curvature law dθ/ds = −κ y cos²θ (κ = ρω²/H) at
κ = 1, the ratio half-width/half-length depends on h alone and decreases from 1 (h → 0) to 0
(h → ∞); one Brent root search in h matches it to d/ℓ and a rescaling gives the curve (a
shooting method). That curve is the initial guess of ``scipy.integrate.solve_bvp`` on the system
above, which adds gravity (by continuation in γ when a direct solve fails) and gives the final
solution for every case, so one solver and one tolerance stand behind every curve.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

# Ropes closer to straight than this have an amplitude below what double precision resolves.
MIN_SLACK = 1e-9
BVP_TOL = 1e-8
BVP_MAX_NODES = 5_000


@dataclass(frozen=True)
class JumpRopeCurve:
    """A solved rope, in physical units: ``x``, ``y`` [m], ``s`` (arc length) and ``tension`` [N]
    at ``len(s)`` points equally spaced along the rope. ``kappa`` = ρω²/H is the constant of the
    graph-form equation H y'' = −ρω²y√(1+y'²) (g = 0 only; NaN with gravity, where H varies)."""

    s: np.ndarray
    x: np.ndarray
    y: np.ndarray
    tension: np.ndarray
    length: float
    separation: float
    omega: float
    gravity: float
    density: float
    kappa: float
    residual: float

    @property
    def max_height(self) -> float:
        return float(self.y.max())

    @property
    def end_tensions(self) -> tuple:
        return float(self.tension[0]), float(self.tension[-1])


def _half_arc(h: float):
    """From the top (y = h, θ = 0) down to the axis at κ = 1: (half-length, half-width, solution)."""
    from scipy.integrate import solve_ivp

    def rhs(_, u):
        x, y, theta = u
        c = math.cos(theta)
        return [c, math.sin(theta), -y * c * c]

    def hits_axis(_, u):
        return u[1]

    hits_axis.terminal, hits_axis.direction = True, -1
    # the arc reaches the axis before s = π/2 + h·(something); a generous bound on the length
    s_max = 4.0 * (math.pi + h)
    sol = solve_ivp(rhs, (0.0, s_max), [0.0, h, 0.0], events=hits_axis, rtol=1e-12, atol=1e-14, dense_output=True)
    if sol.status != 1:
        raise RuntimeError(f"jump_rope_curve: the shooting integration did not reach the axis (h={h})")
    s_end = float(sol.t_events[0][0])
    return s_end, float(sol.y_events[0][0][0]), sol


def _symmetric_guess(ratio: float, sigma: np.ndarray) -> np.ndarray:
    """The γ = 0 solution (X, Y, P, Q) on the grid ``sigma`` ⊂ [0, 1] by shooting (see module doc)."""
    from scipy.optimize import brentq

    def mismatch(h):
        s_half, w_half, _ = _half_arc(h)
        return w_half / s_half - ratio

    # a nearly taut rope is the sine of amplitude h with 1 − d/ℓ ≈ h²/4 (units κ = 1)
    lo = 2.0 * math.sqrt(1.0 - ratio) / 4.0
    hi = 4.0 * lo
    while mismatch(hi) > 0:
        hi *= 2.0
        if hi > 1e6:
            raise RuntimeError(f"jump_rope_curve: no arc with separation/length = {ratio}")
    while mismatch(lo) < 0:
        lo /= 2.0
    h = brentq(mismatch, lo, hi, xtol=1e-14, rtol=1e-13)
    s_half, w_half, sol = _half_arc(h)
    c = 0.5 / s_half  # rescale so that the whole rope has length 1
    # σ ∈ [0, 1/2] runs from the left end up to the top: shooting variable t = s_half − σ/c
    t = np.abs(0.5 - sigma) / c
    xs, ys, theta = sol.sol(t)
    left = sigma < 0.5
    X = np.where(left, 0.5 * ratio - c * xs, 0.5 * ratio + c * xs)
    Y = c * ys
    theta = np.where(left, -theta, theta)  # the shooting runs right from the top; mirror for the left half
    p = c * c  # horizontal tension: κ = 1/P in units of ρω²ℓ² and length ℓ, and κ scales as 1/c²
    return np.stack([X, Y, np.full_like(X, p), p * np.tan(theta)])


def _solve_bvp(ratio: float, gamma: float, sigma: np.ndarray, guess: np.ndarray):
    from scipy.integrate import solve_bvp

    def rhs(_, u):
        x, y, p, q = u
        norm = np.sqrt(p * p + q * q)
        return np.stack([p / norm, q / norm, np.full_like(p, -gamma), -y])

    def bc(ua, ub):
        return np.array([ua[0], ua[1], ub[0] - ratio, ub[1]])

    return solve_bvp(rhs, bc, sigma, guess, tol=BVP_TOL, max_nodes=BVP_MAX_NODES)


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"jump_rope_curve: {name} must be a positive finite number, got {value!r}")
    return float(value)


def jump_rope_curve(length: float, separation: float, omega: float, *, gravity: float = 0.0, density: float = 1.0,
                    n_points: int = 401, continuation_steps: int = 8) -> JumpRopeCurve:
    """The equilibrium curve of a rope of ``length`` ℓ with ends ``separation`` d apart on the
    rotation axis, spinning at ``omega`` ω [rad/s], with ``gravity`` g along the axis (from the
    first end towards the second; 0 for a skipping rope) and linear ``density`` ρ [kg/m].

    Solves the boundary value problem of the module docstring and returns the curve at
    ``n_points`` points equally spaced along the rope. The shape depends only on d/ℓ and
    g/(ω²ℓ); the tension scales with ρω²ℓ².
    """
    length, separation = _check_positive("length", length), _check_positive("separation", separation)
    omega, density = _check_positive("omega", omega), _check_positive("density", density)
    if isinstance(gravity, bool) or not isinstance(gravity, (int, float)) or not math.isfinite(gravity):
        raise ValueError(f"jump_rope_curve: gravity must be a finite number, got {gravity!r}")
    if not isinstance(n_points, int) or n_points < 3:
        raise ValueError(f"jump_rope_curve: n_points must be an integer >= 3, got {n_points!r}")
    ratio = separation / length
    if ratio >= 1.0 - MIN_SLACK:
        raise ValueError(f"jump_rope_curve: the rope (length {length}) must be longer than the separation of its "
                         f"ends ({separation}) by a relative slack of at least {MIN_SLACK}")
    gamma = float(gravity) / (omega * omega * length)

    mesh = np.linspace(0.0, 1.0, 201)
    guess = _symmetric_guess(ratio, mesh)
    sol = _solve_bvp(ratio, gamma, mesh, guess)
    if not sol.success and gamma != 0.0:
        # follow the solution from the gravity-free shape, a fraction of γ at a time
        for g in np.linspace(0.0, gamma, continuation_steps + 1)[1:]:
            sol = _solve_bvp(ratio, float(g), mesh if not sol.success else sol.x,
                             guess if not sol.success else sol.y)
            if not sol.success:
                break
    if not sol.success:
        hint = (" With gravity a taut equilibrium exists only while the spin is fast enough: as g/(ω²ℓ) grows the "
                "tension at the far end of the rope's loop falls to zero; spin faster or shorten the rope."
                if gamma != 0.0 else "")
        raise RuntimeError(f"jump_rope_curve: the boundary value problem did not converge "
                           f"(d/ℓ={ratio:.4g}, g/(ω²ℓ)={gamma:.4g}): {sol.message}.{hint}")

    sigma = np.linspace(0.0, 1.0, n_points)
    X, Y, P, Q = sol.sol(sigma)
    if -Y.min() > Y.max():
        # y → −y maps solutions to solutions (the mirror image across the axis): report the y ≥ 0 one
        Y, Q = -Y, -Q
    force = density * omega * omega * length * length
    tension = force * np.sqrt(P * P + Q * Q)
    # κ = ρω²/H with H = P·ρω²ℓ² (constant when g = 0)
    kappa = 1.0 / (float(P[0]) * length * length) if gamma == 0.0 else float("nan")
    return JumpRopeCurve(s=sigma * length, x=X * length, y=Y * length, tension=tension, length=length,
                         separation=separation, omega=omega, gravity=float(gravity), density=density, kappa=kappa,
                         residual=float(np.max(sol.rms_residuals)))


def taut_rope_sine(x: np.ndarray, length: float, separation: float) -> np.ndarray:
    """The small-slack limit of the skipping-rope curve: A sin(πx/d), A = (2d/π)√(ℓ/d − 1)
    (the sine whose arc length is ℓ to first order in the slack)."""
    amplitude = 2.0 * separation / math.pi * math.sqrt(length / separation - 1.0)
    return amplitude * np.sin(math.pi * np.asarray(x) / separation)


def plot_jump_rope(curves: Union[JumpRopeCurve, Sequence[JumpRopeCurve]], path: Union[str, Path],
                   title: Optional[str] = None) -> Path:
    """Draw each rope at two opposite phases of its turn (y and −y) with the axis, and save the
    figure to ``path`` (any format matplotlib knows from the suffix)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if isinstance(curves, JumpRopeCurve):
        curves = [curves]
    if not curves:
        raise ValueError("plot_jump_rope: needs at least one curve")
    fig, ax = plt.subplots(figsize=(9, 5))
    for c in curves:
        label = f"ℓ/d = {c.length / c.separation:.2f}"
        if c.gravity:
            label += f", g/(ω²ℓ) = {c.gravity / (c.omega ** 2 * c.length):.2f}"
        (line,) = ax.plot(c.x, c.y, label=label)
        ax.plot(c.x, -c.y, color=line.get_color(), alpha=0.35, linestyle="--")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_aspect("equal")
    ax.set_xlabel("position along the rotation axis")
    ax.set_ylabel("distance from the axis")
    ax.set_title(title or "Spinning rope: equilibrium curves (dashed: half a turn later)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["JumpRopeCurve", "jump_rope_curve", "plot_jump_rope", "taut_rope_sine"]
