"""Unargmaxable classes of a softmax layer (post 你的语言模型有没有“无法预测的词”; Grivas,
Bogoychev & Lopez 2022, "Low-Rank Softmax Can Have Unargmaxable Classes in Theory but Rarely in
Practice").

Class k of logits ``W x + b`` (W ∈ R^{V×d}) is *argmaxable* iff some input makes it the strict
winner: ∃x ∀j≠k: (w_k − w_j)·x + b_k − b_j > 0. Without bias this says w_k is a vertex of the
convex hull of the rows of W; an unargmaxable class can never be predicted, whatever the input.

Deciding one class is a linear program. Homogenise with z > 0 (x ↦ x/z), since a strict system
of linear inequalities is feasible iff its homogenised cone has a point with z > 0:

    maximise t   subject to   (w_j − w_k)·x + (b_j − b_k)·z + t ≤ 0   ∀ j ≠ k,
                              t ≤ z,   ‖x‖∞ ≤ 1,   0 ≤ z ≤ 1.

The box costs nothing: the constraints are a cone in (x, z, t), so any strictly feasible point
can be scaled into the box, however far the class's region lies from the origin (a fixed box
|x| ≤ R on the un-homogenised problem would miss regions beyond R, which large biases create).
t ≤ z keeps z > 0 whenever t > 0, and x/z is then a witness with margin t/z. Hence k is
argmaxable iff the optimum t* > 0, and t* is this module's *normalised margin*: the worst
logit gap at the best point of the unit box (W and b first divided by their largest absolute
entry, so that margins compare across heads).

One LP per class (V − 1 constraints) is too slow to run V = 10⁴ times, so cheap sufficient tests
go first, vectorised over all classes, and prove most classes argmaxable with an explicit witness:

1. candidate directions u for each class — w_k, w_k − mean(W), Σ⁺(w_k − mean(W)) — each with the
   largest z that keeps every gap positive where u already separates k (bias-free, u = w_k proves
   every class with w_k·w_k > w_k·w_j ∀j), plus x = 0 (the class with the largest bias);
2. a batched relaxation (perceptron) method from the best candidate: repeatedly add the
   normalised most-violated constraint row; any point where every gap is positive is a witness
   (the method terminates on every argmaxable class, after O(1/margin²) steps);
3. the LP (``scipy.optimize.linprog``, HiGHS) for what is left.

Every class reported argmaxable comes with a witness x whose logit gaps were recomputed in
float64 and are all positive, so "argmaxable" is never a numerical accident of a solver.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

Tensor = torch.Tensor

STAGE_CANDIDATE, STAGE_RELAXATION, STAGE_LP = 0, 1, 2
# Entries of the [classes × V] gap matrices per chunk (float64): 2^22 → 32 MiB each.
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class ArgmaxabilityResult:
    """``unargmaxable``: sorted ids of the classes that can never win. ``margins`` [V]: normalised
    margin of the best point found (> tol for argmaxable classes — a lower bound on the LP optimum
    t* where no LP ran, t* itself where it did — and 0 for unargmaxable ones). ``witnesses``
    [V, d]: an input where the class strictly wins (NaN rows for unargmaxable classes).
    ``stage`` [V]: what decided each class (0 candidate direction, 1 relaxation, 2 LP)."""

    unargmaxable: Tensor
    margins: Tensor
    witnesses: Tensor
    stage: Tensor
    n_lp: int
    seconds: float

    @property
    def argmaxable(self) -> Tensor:
        """Boolean mask [V] of the classes that some input makes the strict argmax."""
        mask = torch.ones(self.margins.shape[0], dtype=torch.bool, device=self.margins.device)
        mask[self.unargmaxable] = False
        return mask


def _check(w: Tensor, b: Optional[Tensor]) -> None:
    if not isinstance(w, Tensor):
        raise TypeError(f"unargmaxable: W must be a tensor [V, d], got {type(w).__name__}")
    if w.dim() != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"unargmaxable: expects the output layer's weight W of shape [V >= 1, d >= 1], got {list(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"unargmaxable: W must be floating point, got {w.dtype}")
    if not torch.isfinite(w).all():
        raise ValueError("unargmaxable: W contains NaN or inf")
    if b is not None:
        if not isinstance(b, Tensor) or not b.is_floating_point():
            raise TypeError("unargmaxable: b must be a floating-point tensor [V] or None")
        if b.shape != (w.shape[0],):
            raise ValueError(f"unargmaxable: expects the bias b of shape [{w.shape[0]}] (one per class), got {list(b.shape)}")
        if b.device != w.device:
            raise ValueError(f"unargmaxable: W is on {w.device} but b on {b.device}")
        if not torch.isfinite(b).all():
            raise ValueError("unargmaxable: b contains NaN or inf")


def _chunks(n_rows: int, n_cols: int):
    step = max(1, CHUNK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def _gaps(w: Tensor, b: Tensor, ids: Tensor, x: Tensor, z: Tensor) -> Tensor:
    """gap[i, j] = (w_k − w_j)·x_i + (b_k − b_j)·z_i for k = ids[i]; +inf at j = k."""
    logits = x @ w.t() + z[:, None] * b[None, :]
    own = logits.gather(1, ids[:, None])
    gap = own - logits
    return gap.scatter(1, ids[:, None], float("inf"))


def _normalised_margin(w: Tensor, b: Tensor, ids: Tensor, x: Tensor, z: Tensor) -> Tensor:
    """min(min_j gap_j, z) / ‖(x, z)‖∞: the LP objective at the point (x, z) scaled into the box."""
    worst = torch.minimum(_gaps(w, b, ids, x, z).min(1).values, z)
    scale = torch.maximum(x.abs().amax(1), z.abs())
    return torch.where(scale > 0, worst / scale.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(worst))


def _try_direction(w: Tensor, b: Tensor, ids: Tensor, u: Tensor, has_bias: bool):
    """The best of two points along direction u_i for class k = ids[i]: x = u with z = ‖u‖∞, and
    — where u alone separates k (every (w_k − w_j)·u > 0) — z at half the largest value that keeps
    every gap (w_k − w_j)·u + (b_k − b_j)·z positive. Returns (z, normalised margin)."""
    direction_gap = _gaps(w, torch.zeros_like(b), ids, u, torch.zeros_like(u[:, 0]))
    bias_gap = b[ids][:, None] - b[None, :]
    cap = u.abs().amax(1)
    # where the bias works against class k, z must stay below direction_gap / (−bias_gap)
    limit = torch.where(bias_gap < 0, direction_gap / (-bias_gap).clamp_min(1e-300), torch.full_like(bias_gap, float("inf")))
    separated = direction_gap.min(1).values > 0
    z_sep = torch.where(separated, torch.minimum(0.5 * limit.min(1).values, cap), cap)
    best_z, best_m = None, None
    for z in (z_sep, cap) if has_bias else (cap,):  # without bias z only sets the scale
        gap = direction_gap + z[:, None] * bias_gap  # +inf stays at j = k
        worst = torch.minimum(gap.min(1).values, z)
        scale = torch.maximum(cap, z)
        m = torch.where((z > 0) & (scale > 0), worst / scale.clamp_min(1e-300), torch.full_like(z, -float("inf")))
        if best_m is None:
            best_z, best_m = z, m
        else:
            better = m > best_m
            best_z, best_m = torch.where(better, z, best_z), torch.where(better, m, best_m)
    return best_z, best_m


def _directions(w: Tensor, ids: Tensor):
    """Candidate directions for the classes ``ids``, cheapest and most often sufficient first:
    w_k (a bias-free proof for every row with w_k·w_k > w_k·w_j), w_k − mean(W), and
    Σ⁺(w_k − mean(W)) (whitened: the separating direction of an elliptical cloud)."""
    wk = w[ids]
    yield wk
    centred = wk - w.mean(0)
    yield centred
    cov = torch.cov(w.t(), correction=0).reshape(w.shape[1], w.shape[1])
    yield centred @ torch.linalg.pinv(cov, hermitian=True)


def _relaxation(w: Tensor, b: Tensor, ids: Tensor, x: Tensor, z: Tensor, iterations: int):
    """Agmon–Motzkin relaxation on the homogenised system, batched over classes: add the
    normalised most-violated row (w_k − w_j, b_k − b_j) — or (0, 1) if z ≤ 0 — until every gap
    is positive. Returns the final points and which classes reached a witness."""
    found = torch.zeros(ids.shape[0], dtype=torch.bool, device=w.device)
    wk, bk = w[ids], b[ids]
    for _ in range(iterations):
        worst, j = _gaps(w, b, ids, x, z).min(1)
        found = (worst > 0) & (z > 0)
        if bool(found.all()):
            break
        a_x, a_z = wk - w[j], bk - b[j]
        norm = torch.sqrt((a_x * a_x).sum(1) + a_z * a_z)
        # a duplicated row (norm 0) can never be separated: such classes stop moving
        step = torch.where(norm > 0, 1.0 / norm.clamp_min(1e-300), torch.zeros_like(norm))
        todo = ~found
        fix_z = todo & (z <= 0)
        move = todo & ~fix_z
        # classes whose z went non-positive repair z first (row (0, 1)); the others follow their worst row
        x = torch.where(move[:, None], x + step[:, None] * a_x, x)
        z = torch.where(fix_z, z + 1.0, torch.where(move, z + step * a_z, z))
    return x, z, found


def _check_tol(tol) -> None:
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and 0 <= tol < 1):
        raise ValueError(f"unargmaxable: tol must be a number in [0, 1), got {tol!r}")


def _normalised(W: Tensor, b: Optional[Tensor]):
    """W and b in float64, divided by their largest absolute entry (margins become comparable
    across heads; argmaxability is invariant under a positive common scale)."""
    w = W.detach().double()
    bias = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) if b is None else b.detach().double()
    scale = torch.maximum(w.abs().max(), bias.abs().max())
    if scale > 0:
        w, bias = w / scale, bias / scale
    return w, bias


def _lp(w: np.ndarray, b: np.ndarray, k: int, rivals: np.ndarray):
    """The LP of the module docstring for class k, over the constraints of ``rivals`` only:
    (x, z, t*). Dropping constraints can only raise t*."""
    from scipy.optimize import linprog

    d = w.shape[1]
    m = rivals.shape[0]
    a = np.empty((m + 1, d + 2))
    a[:m, :d] = w[rivals] - w[k]
    a[:m, d] = b[rivals] - b[k]
    a[:m, d + 1] = 1.0
    a[m] = 0.0
    a[m, d], a[m, d + 1] = -1.0, 1.0  # t − z ≤ 0
    cost = np.zeros(d + 2)
    cost[-1] = -1.0
    bounds = [(-1.0, 1.0)] * d + [(0.0, 1.0), (None, 1.0)]
    res = linprog(cost, A_ub=a, b_ub=np.zeros(m + 1), bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"unargmaxable: the linear program of class {k} failed: {res.message}")
    return res.x[:d], float(res.x[d]), float(-res.fun)


def _decide_by_lp(w: np.ndarray, b: np.ndarray, k: int, start_x: np.ndarray, start_z: float, tol: float,
                  batch: int):
    """Constraint generation: solve the LP over a few rivals — the classes closest to winning at
    the best pre-filter point and the rows most similar to w_k — then add the rivals that beat k
    at the LP's point, until either t* ≤ tol on the subset (then on all constraints too: k is
    unargmaxable) or the LP's point wins against every class (a witness). Returns (x, z) or None."""
    v = w.shape[0]
    others = np.arange(v) != k

    def gaps(x, z):
        g = (w[k] - w) @ x + (b[k] - b) * z
        g[k] = np.inf
        return g

    near = np.argsort(gaps(start_x, start_z))[:batch]
    similar = np.argsort(-(w @ w[k]))[: batch + 1]
    active = np.zeros(v, dtype=bool)
    active[near] = active[similar] = True
    active &= others
    while True:
        x, z, t = _lp(w, b, k, np.flatnonzero(active))
        if t <= tol or z <= 0:
            return None
        g = gaps(x, z)
        violated = (g <= 0) & ~active
        if not violated.any():
            return x, z  # every gap of the subset is ≥ t > 0 and the others are positive
        worst = np.argsort(np.where(violated, g, np.inf))[:batch]
        active[worst[violated[worst]]] = True


def unargmaxable(W: Tensor, b: Optional[Tensor] = None, *, tol: float = 1e-9,
                 relaxation_steps: int = 200) -> ArgmaxabilityResult:
    """The classes of the softmax layer ``logits = W x + b`` that no input x makes the strict
    argmax. ``W`` [V, d], ``b`` [V] or None. A class counts as argmaxable when a witness with
    normalised margin > ``tol`` is found (see the module docstring). ``relaxation_steps`` bounds
    the batched relaxation stage (0 skips it). The pre-filters run on W's device; the LPs on the
    CPU. ``n_lp`` of the result counts the classes that needed an LP."""
    _check(W, b)
    _check_tol(tol)
    if not isinstance(relaxation_steps, int) or relaxation_steps < 0:
        raise ValueError(f"unargmaxable: relaxation_steps must be a non-negative integer, got {relaxation_steps!r}")
    start = time.perf_counter()
    v, d = W.shape
    w, bias = _normalised(W, b)

    margins = torch.zeros(v, dtype=torch.float64, device=w.device)
    witnesses = torch.full((v, d), float("nan"), dtype=torch.float64, device=w.device)
    stage = torch.full((v,), STAGE_LP, dtype=torch.int8, device=w.device)
    ids = torch.arange(v, device=w.device)
    # the best pre-filter point of each class: where the LP looks for its first rivals
    start_x = torch.zeros(v, d, dtype=torch.float64, device=w.device)
    start_z = torch.ones(v, dtype=torch.float64, device=w.device)

    def accept(sel: Tensor, x: Tensor, z: Tensor, margin: Tensor, which: int) -> None:
        witness = x / z[:, None]
        ok = (margin > tol) & torch.isfinite(witness).all(1)  # a tiny z could overflow x/z
        k = sel[ok]
        margins[k] = margin[ok]
        witnesses[k] = witness[ok]
        stage[k] = which

    if v > 1:
        has_bias = bool((bias != 0).any())
        # at x = 0 (z = 1) the gap of class k is b_k − max_{j≠k} b_j: read off the two largest biases
        top2 = torch.topk(bias, 2).values
        rival = torch.where(bias == top2[0], top2[1], top2[0])
        bias_only_gap = bias - rival
        for chunk in _chunks(v, v):
            k = ids[chunk]
            # x = 0: only the bias decides (the class with the strictly largest bias wins there)
            best_x = torch.zeros_like(w[k])
            best_z = torch.ones_like(k, dtype=torch.float64)
            best_m = torch.minimum(bias_only_gap[k], best_z)
            for u in _directions(w, k):
                open_ = best_m <= tol  # later (costlier) directions only for classes still open
                if not bool(open_.any()):
                    break
                z, m = _try_direction(w, bias, k[open_], u[open_], has_bias)
                better = torch.zeros_like(open_)
                better[open_] = m > best_m[open_]
                pos = torch.nonzero(better).flatten()
                sub = better[open_]
                best_x[pos], best_z[pos], best_m[pos] = u[pos], z[sub], m[sub]
            accept(k, best_x, best_z, best_m, STAGE_CANDIDATE)
            start_x[k], start_z[k] = best_x, best_z
            rest = best_m <= tol
            if relaxation_steps and bool(rest.any()):
                kr = k[rest]
                x, z, _ = _relaxation(w, bias, kr, best_x[rest], best_z[rest], relaxation_steps)
                m = torch.where(z > 0, _normalised_margin(w, bias, kr, x, z), torch.full_like(z, -float("inf")))
                accept(kr, x, z, m, STAGE_RELAXATION)
    elif v == 1:
        margins[0], witnesses[0], stage[0] = 1.0, 0.0, STAGE_CANDIDATE  # a lone class always wins

    undecided = torch.nonzero(stage == STAGE_LP).flatten()
    if undecided.numel():
        w_np, b_np = w.cpu().numpy(), bias.cpu().numpy()
        x0, z0 = start_x.cpu().numpy(), start_z.cpu().numpy()
        batch = min(v - 1, max(32, 2 * (d + 2)))
        for k in undecided.tolist():
            found = _decide_by_lp(w_np, b_np, k, x0[k], float(z0[k]), tol, batch)
            if found is not None:
                xt = torch.as_tensor(found[0], dtype=torch.float64, device=w.device)[None]
                zt = torch.tensor([found[1]], dtype=torch.float64, device=w.device)
                kt = torch.tensor([k], device=w.device)
                # the decision rests on the gaps recomputed at the solver's point, not on its t*
                accept(kt, xt, zt, _normalised_margin(w, bias, kt, xt, zt), STAGE_LP)
    unarg = torch.nonzero(torch.isnan(witnesses[:, 0])).flatten()
    margins[unarg] = 0.0
    return ArgmaxabilityResult(unargmaxable=unarg, margins=margins, witnesses=witnesses, stage=stage,
                               n_lp=int(undecided.numel()), seconds=time.perf_counter() - start)


def reference_argmaxable(W: Tensor, b: Optional[Tensor] = None, tol: float = 1e-9) -> Tensor:
    """Argmaxable mask [V] from the full LP of every class (all V − 1 constraints, no
    pre-filter, no constraint generation): the oracle for :func:`unargmaxable`. A class counts
    when t* > tol and the solver's point, checked in float64, wins with margin > tol."""
    _check(W, b)
    _check_tol(tol)
    w, bias = _normalised(W, b)
    v, d = w.shape
    w_np, b_np = w.cpu().numpy(), bias.cpu().numpy()
    out = torch.zeros(v, dtype=torch.bool)
    for k in range(v):
        if v == 1:
            out[k] = True
            continue
        x, z, t = _lp(w_np, b_np, k, np.flatnonzero(np.arange(v) != k))
        if t > tol and z > 0:
            kt = torch.tensor([k], device=w.device)
            xt = torch.as_tensor(x, dtype=torch.float64, device=w.device)[None]
            zt = torch.tensor([z], dtype=torch.float64, device=w.device)
            out[k] = bool(_normalised_margin(w, bias, kt, xt, zt)[0] > tol)
    return out.to(W.device)


__all__ = ["ArgmaxabilityResult", "reference_argmaxable", "unargmaxable"]
