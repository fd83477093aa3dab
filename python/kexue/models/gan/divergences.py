"""The f-divergence table of f-GAN (Nowozin, Cseke & Tomioka 2016, Table 6; post
f-GAN简介：GAN模型的生产车间).

For a convex ``f`` with ``f(1) = 0``, ``D_f(P‖Q) = E_Q[f(p/q)]``, and Fenchel duality
(``f(u) = sup_t {t·u − f*(t)}``) gives the variational lower bound

    D_f(P‖Q) ≥ sup_T  E_P[T(x)] − E_Q[f*(T(x))],

tight at ``T*(x) = f'(p(x)/q(x))``. The critic outputs an unconstrained ``V(x)`` and the output
activation ``g_f`` maps it into the domain of ``f*``: ``T = g_f(V)``.

Each entry keeps its formulas in one place: ``f``, its derivative ``f_prime`` (the optimal critic
is ``f'(p/q)``), the conjugate ``conjugate`` = ``f*``, the activation ``activation`` = ``g_f``, and
``conjugate_of_activation`` = ``f*(g_f(v))`` in a closed form that is stable for any real ``v``
(composing the two naively overflows, e.g. ``−log(2 − exp(t))`` near ``t = log 2`` for JS). The
tests check ``f*(f'(u)) = u·f'(u) − f(u)`` (the Fenchel–Young equality) and the composition.

``"gan"`` is the original GAN's ``f(u) = u log u − (u+1) log(u+1)``: its divergence is
``2·JS(P‖Q) − log 4``, so ``f(1) = −log 4`` (``f_at_one``) instead of 0; the bound is then
``E_P[log σ(V)] + E_Q[log(1 − σ(V))]``, the discriminator objective of Goodfellow et al.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

LOG2 = math.log(2.0)


@dataclass(frozen=True)
class FDivergence:
    """One row of the f-GAN table; every callable is elementwise on tensors.

    ``conjugate_domain`` is the open interval (low, high) of ``t`` where ``f*(t)`` is finite;
    ``activation`` maps all of R into it. ``f_at_one`` is ``f(1)`` (0 for a divergence,
    ``−log 4`` for the original GAN's objective).
    """

    name: str
    description: str
    f: Callable[[Tensor], Tensor]
    f_prime: Callable[[Tensor], Tensor]
    conjugate: Callable[[Tensor], Tensor]
    activation: Callable[[Tensor], Tensor]
    conjugate_of_activation: Callable[[Tensor], Tensor]
    conjugate_domain: Tuple[float, float]
    f_at_one: float = 0.0

    def divergence(self, p: Tensor, q: Tensor, dim: int = -1) -> Tensor:
        """``D_f(P‖Q) = Σ_x q(x) f(p(x)/q(x))`` for discrete distributions with ``q > 0``."""
        return (q * self.f(p / q)).sum(dim)

    def bound(self, t_p: Tensor, t_q: Tensor) -> Tensor:
        """``E_P[T] − E_Q[f*(T)]`` from critic values ``T`` (already in the domain of ``f*``) on
        samples of P and of Q."""
        return t_p.mean() - self.conjugate(t_q).mean()

    def bound_from_logits(self, v_p: Tensor, v_q: Tensor) -> Tensor:
        """The same bound from raw critic outputs ``V``: ``E_P[g_f(V)] − E_Q[f*(g_f(V))]``."""
        return self.activation(v_p).mean() - self.conjugate_of_activation(v_q).mean()


def _xlogx(u: Tensor) -> Tensor:
    return torch.xlogy(u, u)


# Each activation is the one of Nowozin et al. (Table 6); the closed forms of f*(g_f(v)) follow
# by substitution and are the ones the losses use.
_TABLE = (
    FDivergence(
        "kl", "Kullback-Leibler KL(P‖Q)",
        f=_xlogx,
        f_prime=lambda u: 1 + torch.log(u),
        conjugate=lambda t: torch.exp(t - 1),
        activation=lambda v: v,
        conjugate_of_activation=lambda v: torch.exp(v - 1),
        conjugate_domain=(-math.inf, math.inf),
    ),
    FDivergence(
        "reverse_kl", "reverse Kullback-Leibler KL(Q‖P)",
        f=lambda u: -torch.log(u),
        f_prime=lambda u: -1 / u,
        conjugate=lambda t: -1 - torch.log(-t),
        activation=lambda v: -torch.exp(-v),
        conjugate_of_activation=lambda v: v - 1,  # −1 − log(e^{−v})
        conjugate_domain=(-math.inf, 0.0),
    ),
    FDivergence(
        "pearson", "Pearson χ²",
        f=lambda u: (u - 1).square(),
        f_prime=lambda u: 2 * (u - 1),
        conjugate=lambda t: t.square() / 4 + t,
        activation=lambda v: v,
        conjugate_of_activation=lambda v: v.square() / 4 + v,
        conjugate_domain=(-math.inf, math.inf),
    ),
    FDivergence(
        "neyman", "Neyman χ²",
        f=lambda u: (1 - u).square() / u,
        f_prime=lambda u: 1 - u.reciprocal().square(),
        conjugate=lambda t: 2 - 2 * torch.sqrt(1 - t),
        activation=lambda v: -torch.expm1(-v),  # 1 − e^{−v}
        conjugate_of_activation=lambda v: 2 - 2 * torch.exp(-v / 2),
        conjugate_domain=(-math.inf, 1.0),
    ),
    FDivergence(
        "hellinger", "squared Hellinger ∫(√p − √q)²",
        f=lambda u: (torch.sqrt(u) - 1).square(),
        f_prime=lambda u: 1 - torch.rsqrt(u),
        conjugate=lambda t: t / (1 - t),
        activation=lambda v: -torch.expm1(-v),
        conjugate_of_activation=lambda v: torch.expm1(v),  # (1 − e^{−v}) / e^{−v}
        conjugate_domain=(-math.inf, 1.0),
    ),
    FDivergence(
        "js", "Jensen-Shannon",
        f=lambda u: _xlogx(u) - (u + 1) * torch.log((u + 1) / 2),
        f_prime=lambda u: torch.log(2 * u / (u + 1)),
        conjugate=lambda t: -torch.log(2 - torch.exp(t)),
        activation=lambda v: LOG2 - F.softplus(-v),
        conjugate_of_activation=lambda v: F.softplus(v) - LOG2,  # −log(2 − 2σ(v))
        conjugate_domain=(-math.inf, LOG2),
    ),
    FDivergence(
        "gan", "original GAN objective (2·JS − log 4)",
        f=lambda u: _xlogx(u) - (u + 1) * torch.log(u + 1),
        f_prime=lambda u: torch.log(u / (u + 1)),
        conjugate=lambda t: -torch.log(-torch.expm1(t)),  # −log(1 − e^t)
        activation=lambda v: -F.softplus(-v),  # log σ(v)
        conjugate_of_activation=F.softplus,  # −log(1 − σ(v))
        conjugate_domain=(-math.inf, 0.0),
        f_at_one=-2 * LOG2,
    ),
)

DIVERGENCES: Dict[str, FDivergence] = {d.name: d for d in _TABLE}


def get_divergence(name: str) -> FDivergence:
    """The table entry called ``name`` (one of ``DIVERGENCES``)."""
    if not isinstance(name, str) or name not in DIVERGENCES:
        raise ValueError(f"unknown f-divergence {name!r}; expected one of {', '.join(DIVERGENCES)}")
    return DIVERGENCES[name]


__all__ = ["DIVERGENCES", "FDivergence", "get_divergence"]
