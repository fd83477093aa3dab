"""Two-dimensional toy densities for normalizing flows.

They are the classic sanity checks of a flow: small enough to train in seconds, with shapes
(disconnected modes, holes, thin curved manifolds) that expose a model's weaknesses at a glance.
Every sampler draws from its own ``torch.Generator`` so a seed reproduces a data set exactly and
never disturbs (or depends on) the global RNG. All densities live roughly in [-2.5, 2.5]².

Two densities are known in closed form (``8gaussians`` and ``checkerboard``): for them
``toy_log_prob`` gives the exact log-density and ``toy_entropy`` the differential entropy, which
is the lower bound a perfect model's test negative log-likelihood (in nats) approaches.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

TOY_NAMES = ("moons", "circles", "8gaussians", "checkerboard", "spirals", "rings")

# moons: the two interleaved half circles of radius 1 (upper one centred at (0, 0), lower one at
# (1, 0.5)) are shifted to centre the set and scaled by MOONS_SCALE so they fill the common box.
MOONS_SCALE = 1.5
# moons: std of the isotropic gaussian noise, in the final (scaled) coordinates.
MOONS_NOISE = 0.1

# circles: radii of the two concentric circles (equal weight each).
CIRCLES_RADII = (1.0, 2.0)
# circles: std of the isotropic gaussian noise.
CIRCLES_NOISE = 0.08

# 8gaussians: the centres sit on a circle of this radius at angles k·π/4, k = 0..7. (FFJORD's
# version puts them at radius 2√2 with std 0.5/√2 ≈ 0.35; we use tighter, well separated modes,
# which is the harder and more telling test for a flow.)
GAUSSIANS_RADIUS = 2.0
# 8gaussians: std of each isotropic component; adjacent centres are 2·R·sin(π/8) ≈ 1.53 apart,
# i.e. about 15 std, so the modes are disconnected for all practical purposes.
GAUSSIANS_STD = 0.1
# 8gaussians: number of mixture components (equal weight each).
GAUSSIANS_COUNT = 8

# checkerboard: the board covers [-HALF, HALF]² with CELLS × CELLS unit squares; the "black"
# squares are those whose integer corner (i, j) = (floor x, floor y) has i + j even, so the
# square [-2, -1) × [-2, -1) is black. Density: uniform on the black squares.
CHECKERBOARD_CELLS = 4
CHECKERBOARD_HALF = CHECKERBOARD_CELLS / 2

# spirals: the angle along each arm runs from 0 to this value (1.5 turns); the second arm is the
# first rotated by π, so the two interleave.
SPIRALS_MAX_ANGLE = 3 * math.pi
# spirals: radius reached at the end of each arm (Archimedean: radius grows linearly with angle).
SPIRALS_RADIUS = 2.0
# spirals: std of the isotropic gaussian noise.
SPIRALS_NOISE = 0.05

# rings: radii of the concentric rings (equal weight each, uniform angle).
RINGS_RADII = (0.5, 1.0, 1.5, 2.0)
# rings: std of the gaussian noise added to the radius only (the rings stay round).
RINGS_NOISE = 0.04

# toy_entropy: Gauss–Hermite nodes per axis for the 8-gaussian entropy integral (see there).
_ENTROPY_QUADRATURE_NODES = 64


def _check_name(name: str) -> None:
    if name not in TOY_NAMES:
        raise ValueError(f"unknown toy density {name!r}; valid names: {', '.join(TOY_NAMES)}")


def _uniform_angle(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) * (2 * math.pi)


def _on_circle(radius: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)


def _moons(n: int, g: torch.Generator) -> torch.Tensor:
    lower = torch.rand(n, generator=g) < 0.5
    t = torch.rand(n, generator=g) * math.pi
    upper_arc = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower_arc = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    x = torch.where(lower[:, None], lower_arc, upper_arc)
    # (0.5, 0.25) is the midpoint of the two arcs' bounding box: centring keeps the set symmetric.
    x = (x - torch.tensor([0.5, 0.25])) * MOONS_SCALE
    return x + MOONS_NOISE * torch.randn(n, 2, generator=g)


def _circles(n: int, g: torch.Generator) -> torch.Tensor:
    radii = torch.tensor(CIRCLES_RADII)
    r = radii[torch.randint(len(CIRCLES_RADII), (n,), generator=g)]
    x = _on_circle(r, _uniform_angle(n, g))
    return x + CIRCLES_NOISE * torch.randn(n, 2, generator=g)


def _gaussian_centres(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    angle = torch.arange(GAUSSIANS_COUNT, dtype=dtype) * (2 * math.pi / GAUSSIANS_COUNT)
    return _on_circle(torch.full_like(angle, GAUSSIANS_RADIUS), angle)


def _eight_gaussians(n: int, g: torch.Generator) -> torch.Tensor:
    k = torch.randint(GAUSSIANS_COUNT, (n,), generator=g)
    return _gaussian_centres()[k] + GAUSSIANS_STD * torch.randn(n, 2, generator=g)


def _checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    # Pick a row uniformly, then a column of the right parity in that row: every black square is
    # equally likely, and the point is uniform inside it.
    row = torch.randint(CHECKERBOARD_CELLS, (n,), generator=g)
    col = 2 * torch.randint(CHECKERBOARD_CELLS // 2, (n,), generator=g) + row % 2
    corner = torch.stack([col, row], dim=1).float() - CHECKERBOARD_HALF
    x = corner + torch.rand(n, 2, generator=g)
    # float32 rounding can carry corner + u (u < 1) onto the far edge, i.e. into the white
    # neighbour or off the board; keep every sample strictly inside its own square.
    return torch.minimum(x, torch.nextafter(corner + 1, corner))


def _spirals(n: int, g: torch.Generator) -> torch.Tensor:
    # The arc length of an Archimedean spiral grows like angle², so angle = sqrt(u)·max makes the
    # points roughly uniform along the arm instead of crowding at the centre.
    angle = torch.sqrt(torch.rand(n, generator=g)) * SPIRALS_MAX_ANGLE
    radius = angle * (SPIRALS_RADIUS / SPIRALS_MAX_ANGLE)
    second_arm = torch.rand(n, generator=g) < 0.5
    x = _on_circle(radius, angle + math.pi * second_arm.float())
    return x + SPIRALS_NOISE * torch.randn(n, 2, generator=g)


def _rings(n: int, g: torch.Generator) -> torch.Tensor:
    radii = torch.tensor(RINGS_RADII)
    r = radii[torch.randint(len(RINGS_RADII), (n,), generator=g)]
    r = r + RINGS_NOISE * torch.randn(n, generator=g)
    return _on_circle(r, _uniform_angle(n, g))


_SAMPLERS: dict[str, Callable[[int, torch.Generator], torch.Tensor]] = {
    "moons": _moons,
    "circles": _circles,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "spirals": _spirals,
    "rings": _rings,
}


def toy_2d(name: str, n: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` samples of the toy density ``name`` as a float32 tensor [n, 2].

    The same (name, n, seed) always gives the same tensor, and different seeds in [0, 2**32)
    give different ones; the global RNG is neither used nor advanced, so sampling data never
    changes what a training run does next.
    """
    _check_name(name)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not 0 <= seed < 2**32:
        # torch's CPU generator keeps only the low 32 bits of a seed, so larger (or negative)
        # seeds would silently repeat the streams of seeds in this range.
        raise ValueError(f"seed must be in [0, 2**32); got {seed}")
    g = torch.Generator().manual_seed(seed)
    return _SAMPLERS[name](n, g).to(torch.float32)


def _eight_gaussians_log_prob(x: torch.Tensor) -> torch.Tensor:
    centres = _gaussian_centres(x.dtype).to(x.device)
    sq_dist = ((x[..., None, :] - centres) ** 2).sum(-1)
    log_norm = math.log(GAUSSIANS_COUNT) + math.log(2 * math.pi * GAUSSIANS_STD**2)
    return torch.logsumexp(-sq_dist / (2 * GAUSSIANS_STD**2), dim=-1) - log_norm


def _checkerboard_log_prob(x: torch.Tensor) -> torch.Tensor:
    cell = torch.floor(x)
    inside = ((x >= -CHECKERBOARD_HALF) & (x < CHECKERBOARD_HALF)).all(-1)
    black = (cell.sum(-1) % 2) == 0
    out = x.new_full(x.shape[:-1], -math.inf)
    out[inside & black] = -math.log(_checkerboard_area())
    return out


def _checkerboard_area() -> float:
    return float(CHECKERBOARD_CELLS**2 // 2)


def toy_log_prob(name: str, x: torch.Tensor) -> torch.Tensor:
    """Exact log-density of ``x`` [..., 2] under the toy density ``name``; returns [...].

    Known for ``8gaussians`` and ``checkerboard`` (``-inf`` off the black squares); the other
    toys have no closed-form density and raise ``NotImplementedError``.
    """
    _check_name(name)
    if x.shape[-1:] != (2,):
        raise ValueError(f"x must have shape [..., 2], got {tuple(x.shape)}")
    # Log-densities in half precision would be too coarse to compare models with.
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    if name == "8gaussians":
        return _eight_gaussians_log_prob(x)
    if name == "checkerboard":
        return _checkerboard_log_prob(x)
    raise NotImplementedError(f"toy density {name!r} has no closed-form log-density")


def _eight_gaussians_entropy() -> float:
    # By the 8-fold rotational symmetry every component contributes the same E[-log p], so the
    # entropy is that expectation under component 0 alone: a gaussian integral, done by tensor
    # Gauss–Hermite quadrature in float64. Near its own centre, log p is a quadratic (exact for
    # the rule) plus the other components' share, which is below 1e-40 here; 64 nodes per axis
    # agree with 128 to ~1e-15, so the result is exact to float64 rounding.
    nodes, weights = np.polynomial.hermite.hermgauss(_ENTROPY_QUADRATURE_NODES)
    u = torch.from_numpy(nodes) * (math.sqrt(2) * GAUSSIANS_STD)
    w = torch.from_numpy(weights) / math.sqrt(math.pi)
    centre = _gaussian_centres(torch.float64)[0]
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), dim=-1) + centre
    return -(torch.outer(w, w) * _eight_gaussians_log_prob(grid)).sum().item()


def toy_entropy(name: str) -> float | None:
    """Differential entropy (nats) of the toy density ``name``, or None where it has no closed
    form. It is the best test negative log-likelihood any model can reach on that density.

    checkerboard: uniform, so log(area of the black squares) = log 8. 8gaussians: Gauss–Hermite
    quadrature of the exact mixture log-density (accurate to float64 rounding; see the code).
    """
    _check_name(name)
    if name == "checkerboard":
        return math.log(_checkerboard_area())
    if name == "8gaussians":
        return _eight_gaussians_entropy()
    return None
