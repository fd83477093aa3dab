"""Modified Bessel functions of the first kind for the von Mises-Fisher distribution, in torch.

The vMF normaliser needs ``log I_v(κ)`` and its mean length needs the ratio
``I_{v+1}(κ) / I_v(κ)``, for orders ``v = d/2 − 1`` up to hundreds and ``κ`` from ~0 to 10⁴ and
beyond: ``I_v`` itself over- and underflows far inside that range, so everything is computed in
log space and on the tensor's own device (no scipy, no host round trip).

Method
------
1. Debye's uniform asymptotic expansion (DLMF 10.41.3) at a large order ``ν``::

       I_ν(νz) ~ e^{νη} / (√(2πν) (1+z²)^{1/4}) · Σ_k u_k(t)/ν^k,
       t = 1/√(1+z²),  η = √(1+z²) + log(z / (1 + √(1+z²))).

   With ``r = √(ν² + x²)`` (so ``t = ν/r``), ``νη = r + ν·log(x / (ν + r))``: no cancellation
   for small or large ``x``. The expansion is uniform in ``z`` (``u_k(t) = O(t^k)``), so at
   ``ν ≥ DEBYE_MIN_ORDER`` with ``DEBYE_TERMS`` terms it is accurate to ~1e-13 relative for
   every ``x > 0``. The polynomials ``u_k`` are generated exactly (rational arithmetic) from
   their recurrence (DLMF 10.41.9) when this module is imported.
2. Lower orders: the ratio ``r_v = I_{v+1}/I_v`` obeys ``r_v = x / (2(v+1) + x·r_{v+1})``
   (from ``I_{v−1} − I_{v+1} = (2v/x) I_v``). Unrolled from ``v`` up to ``v + m`` this is
   Gauss's continued fraction, truncated with the exact tail ``r_{v+m}`` taken from (1); the
   backward direction of the recurrence is the numerically stable one. Then
   ``log I_v = log I_{v+m} − Σ_{j<m} log r_{v+j}``.

Orders are Python floats ``v ≥ 0`` (a vMF's dimension is static); ``x`` is a tensor, computed
in float64 and returned in its own dtype (at least float32). Both functions are differentiable
in ``x`` by autograd through the formulas above (``d/dx log I_v = r_v + v/x``).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import List, Tuple

import torch

Tensor = torch.Tensor

# Debye's expansion is used at orders ≥ DEBYE_MIN_ORDER with DEBYE_TERMS correction terms:
# measured against scipy.special.ive over d ∈ {2..1000}, κ ∈ [1e-3, 1e4], this pair gives
# ~1e-13 relative error on log I and ~1e-12 on the ratio (fewer terms or a lower order lose
# digits; more buy nothing in float64).
DEBYE_MIN_ORDER = 20.0
DEBYE_TERMS = 8


def _debye_polynomials(n_terms: int) -> List[List[float]]:
    """Coefficients (ascending powers of t) of u_0..u_n of Debye's expansion, from
    u_{k+1}(t) = ½ t²(1−t²) u_k'(t) + ⅛ ∫_0^t (1 − 5s²) u_k(s) ds, u_0 = 1 (DLMF 10.41.9)."""
    polys = [[Fraction(1)]]
    for _ in range(n_terms):
        u = polys[-1]
        nxt = [Fraction(0)] * (len(u) + 3)
        for i, c in enumerate(u):
            if i > 0:  # ½ t²(1 − t²) · i c t^{i−1}
                nxt[i + 1] += Fraction(i) * c / 2
                nxt[i + 3] -= Fraction(i) * c / 2
            # ⅛ ∫ (1 − 5s²) c s^i ds
            nxt[i + 1] += c / (8 * (i + 1))
            nxt[i + 3] -= 5 * c / (8 * (i + 3))
        while nxt and nxt[-1] == 0:
            nxt.pop()
        polys.append(nxt)
    return [[float(c) for c in p] for p in polys]


_DEBYE_U = _debye_polynomials(DEBYE_TERMS)


def _check(v: float, x: Tensor, who: str) -> Tuple[Tensor, torch.dtype]:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{who}: the order v must be a finite number >= 0, got {v!r}")
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: x must be a tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point or x.dtype.is_complex:
        raise TypeError(f"{who}: x must be a real floating tensor, got {x.dtype}")
    out_dtype = torch.promote_types(x.dtype, torch.float32)
    return x.to(torch.float64), out_dtype


def _debye_log_iv(nu: float, x: Tensor) -> Tensor:
    """log I_ν(x) for ν ≥ DEBYE_MIN_ORDER and x > 0 (float64)."""
    r = torch.sqrt(nu * nu + x * x)
    t = nu / r
    # Σ_k u_k(t) ν^{−k} is one polynomial in t once ν (a Python number) is fixed: fold the
    # coefficients here and run one Horner pass on the tensor (a few dozen ops, not hundreds).
    coef = [0.0] * max(len(u) for u in _DEBYE_U)
    for k, u in enumerate(_DEBYE_U):
        for j, c in enumerate(u):
            coef[j] += c / nu**k
    series = torch.full_like(x, coef[-1])
    for c in reversed(coef[:-1]):
        series = series * t + c
    return r + nu * torch.log(x / (nu + r)) - 0.5 * math.log(2 * math.pi * nu) + 0.5 * torch.log(t) + torch.log(series)


def _log_iv_and_ratio(v: float, x: Tensor) -> Tuple[Tensor, Tensor]:
    """(log I_v(x), I_{v+1}(x)/I_v(x)) in float64 for x > 0."""
    m = max(0, math.ceil(DEBYE_MIN_ORDER - v))
    top = v + m
    log_i_top = _debye_log_iv(top, x)
    ratio = torch.exp(_debye_log_iv(top + 1, x) - log_i_top)  # r_{v+m}
    log_ratios = torch.zeros_like(x)
    for j in range(m - 1, -1, -1):  # r_{v+j} from r_{v+j+1}: Gauss's continued fraction, backwards
        ratio = x / (2 * (v + j + 1) + x * ratio)
        log_ratios = log_ratios + torch.log(ratio)
    return log_i_top - log_ratios, ratio


def log_bessel_iv_and_ratio(v: float, x: Tensor) -> Tuple[Tensor, Tensor]:
    """(log I_v(x), I_{v+1}(x)/I_v(x)) elementwise from one evaluation, for an order ``v ≥ 0``
    and ``x ≥ 0``. At x = 0: log I_v(0) = 0 for v = 0 and −inf otherwise, the ratio 0. Accurate to
    ~1e-13 (log) and ~1e-12 (ratio) relative in float64."""
    x64, out_dtype = _check(v, x, "log_bessel_iv_and_ratio")
    positive = x64 > 0
    safe = torch.where(positive, x64, torch.ones_like(x64))  # keeps the untaken branch finite for autograd
    log_iv, ratio = _log_iv_and_ratio(float(v), safe)
    log_iv = torch.where(positive, log_iv, torch.full_like(x64, 0.0 if v == 0 else -math.inf))
    ratio = torch.where(positive, ratio, torch.zeros_like(x64))
    return log_iv.to(out_dtype), ratio.to(out_dtype)


def log_bessel_iv(v: float, x: Tensor) -> Tensor:
    """log I_v(x) elementwise (see ``log_bessel_iv_and_ratio``)."""
    return log_bessel_iv_and_ratio(v, x)[0]


def bessel_iv_ratio(v: float, x: Tensor) -> Tensor:
    """I_{v+1}(x) / I_v(x) elementwise (see ``log_bessel_iv_and_ratio``): the mean resultant
    length A_d(κ) of a vMF on S^{d−1} is ``bessel_iv_ratio(d/2 − 1, κ)``."""
    return log_bessel_iv_and_ratio(v, x)[1]


__all__ = ["DEBYE_MIN_ORDER", "DEBYE_TERMS", "bessel_iv_ratio", "log_bessel_iv", "log_bessel_iv_and_ratio"]
