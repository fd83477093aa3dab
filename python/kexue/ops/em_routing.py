"""EM routing between matrix capsules (Hinton, Sabour & Frosst 2018; MODELS.md C2).

``em_routing`` runs a fused kernel forward and backward (math in csrc/kexue/em_routing.h; the
autograd kernel is registered in C++, csrc/ops/em_routing.cpp, and calls
``kexue::em_routing_backward``; the forward keeps the iterations' history when it is no larger
than the votes, and the backward reads it, else it recomputes the EM iterations).
``reference_em_routing`` is the paper's procedure in plain PyTorch: the readable spec and the
test oracle.

Inverse-temperature schedule: a linear ramp, λ_t = final_lambda·(t + 1)/iterations for
t = 0 .. iterations-1. It reaches final_lambda exactly at the last M-step whatever the number of
iterations (the often-quoted final_lambda·(1 − 0.95^(t+1)) only reaches ~14% of it after 3
iterations), and is monotone, so early iterations use softer activations.

Numerical guards (also in the reference): the M-step divides by Σ_i R_ij a_i + 1e-12 (so an output
capsule that receives no assignment gives μ = 0, σ² = eps instead of 0/0); σ² has the floor eps;
the E-step works with log a_j = log_sigmoid(·) and a max-subtracted softmax.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from kexue.ops import _checks as C
from kexue.ops._common import check_int, check_real
from kexue.ops._autocast import promote_under_autocast

Tensor = torch.Tensor
DENOM_EPS = 1e-12
MAX_ITERATIONS = 1000  # csrc/kexue/em_routing.h's kMaxIterations
_OP = "kexue.ops.em_routing"


def _as_beta(beta: Union[Tensor, float], name: str, n_out: int, like: Tensor) -> Tensor:
    if not isinstance(beta, Tensor):
        # at least fp32: under autocast bf16 votes are promoted, and 0.1 must not round to bf16 first
        beta = torch.tensor(float(beta), dtype=torch.promote_types(like.dtype, torch.float32), device=like.device)
    if beta.dim() == 0:
        return beta.expand(n_out)
    if beta.dim() != 1 or beta.shape[0] != n_out:
        raise ValueError(f"{_OP}: {name} must be a scalar or have shape [N_out] = [{n_out}], got "
                         f"{tuple(beta.shape)}")
    return beta


def _check_args(votes, a_in, beta_u, beta_a, iterations, eps):
    if votes.dim() != 4:
        raise ValueError(f"{_OP}: votes must have shape [B, N_in, N_out, H], got {tuple(votes.shape)}")
    check_int(iterations, "iterations", _OP, maximum=MAX_ITERATIONS)
    check_real(eps, "eps", _OP, positive=True)
    B, n_in, n_out, _ = votes.shape
    if a_in.dim() != 2 or tuple(a_in.shape) != (B, n_in):
        raise ValueError(f"{_OP}: a_in must have shape [B, N_in] = [{B}, {n_in}], got {tuple(a_in.shape)}")
    return (_as_beta(beta_u, "beta_u", n_out, votes), _as_beta(beta_a, "beta_a", n_out, votes))


def em_routing(
    votes: Tensor,
    a_in: Tensor,
    beta_u: Union[Tensor, float],
    beta_a: Union[Tensor, float],
    iterations: int = 3,
    *,
    final_lambda: float = 0.01,
    eps: float = 1e-6,
    pose_dim: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """EM routing: votes [B, N_in, N_out, H] and input activations a_in [B, N_in] (in [0, 1]) →
    (pose means mu [B, N_out, H], output activations a_out [B, N_out]).

    beta_u, beta_a: [N_out] tensors (one per output capsule type) or scalars / 0-d tensors shared
    by all output capsules (broadcast; the gradient of a 0-d tensor is the sum). ``pose_dim``, if
    given, is checked against H (e.g. 16 for 4×4 poses). float32 and float64.

    R = 1/N_out; for t < iterations, λ_t = final_lambda·(t+1)/iterations:
      M-step: w = R·a_in; μ = Σ_i w V / Σ_i w; σ² = Σ_i w (V − μ)² / Σ_i w + eps;
              cost_h = (β_u + log σ_h)·Σ_i w; a = sigmoid(λ_t (β_a − Σ_h cost_h))
      E-step (not after the last M-step): R = softmax_j(log a_j + log N(V_ij; μ_j, σ_j²)).
    The gradient flows through every iteration (as autograd through the unrolled reference) to
    votes, a_in, beta_u and beta_a.
    """
    bu, ba = _check_args(votes, a_in, beta_u, beta_a, iterations, eps)
    check_real(final_lambda, "final_lambda", _OP, nonnegative=True)
    if pose_dim is not None and votes.shape[-1] != pose_dim:
        raise ValueError(f"{_OP}: votes' last dimension H = {votes.shape[-1]} does not match "
                         f"pose_dim = {pose_dim}")
    # The forward keeps its history for the backward when one will run (within the votes' own
    # size; otherwise the backward recomputes the iterations).
    save_state = torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in (votes, a_in, bu, ba))
    mu, a_out, _ = torch.ops.kexue.em_routing(votes, a_in, bu, ba, int(iterations), float(final_lambda),
                                              float(eps), save_state)
    return mu, a_out


def _check_inputs(votes, a_in, beta_u, beta_a, iterations, final_lambda, eps, op):
    """csrc/ops/em_routing.cpp's check_inputs()."""
    C.device_supported(votes, op)
    C.check(votes.dtype in (torch.float32, torch.float64), op, "votes must be float32 or float64, got ",
            C.dtype_name(votes.dtype))
    C.check(votes.dim() == 4, op, "votes must have shape [B, N_in, N_out, H], got ", votes.dim(),
            "-d tensor of shape ", C.sizes(votes))
    C.check(iterations >= 1, op, "iterations must be >= 1, got ", iterations)
    C.check(iterations <= MAX_ITERATIONS, op, "iterations must be at most ", MAX_ITERATIONS,
            " (the backward keeps every iteration), got ", iterations)
    C.check(C.finite(eps) and eps > 0, op, "eps must be positive and finite, got ", C.num(eps))
    C.check(C.finite(final_lambda) and final_lambda >= 0, op, "final_lambda must be non-negative and finite, got ",
            C.num(final_lambda))
    B, n_in, n_out, _ = votes.shape
    for t, name in ((a_in, "a_in"), (beta_u, "beta_u"), (beta_a, "beta_a")):
        C.like(votes, "votes", t, op, name)
    C.check(a_in.dim() == 2 and a_in.shape[0] == B and a_in.shape[1] == n_in, op, "a_in must have shape [", B, ", ",
            n_in, "], got ", C.sizes(a_in))
    for t, name in ((beta_u, "beta_u"), (beta_a, "beta_a")):
        C.check(t.dim() == 1 and t.shape[0] == n_out, op, name, " must have shape [", n_out, "], got ", C.sizes(t))


def _history_size(T, I, J, H):
    """csrc/kexue/em_routing.h's history_scratch: the per-sample state a forward keeps."""
    return T * (I * J + 3 * J * H + 4 * J)


@torch.library.register_fake("kexue::em_routing")
def _em_routing_fake(votes, a_in, beta_u, beta_a, iterations, final_lambda, eps, save_state=False):
    _check_inputs(votes, a_in, beta_u, beta_a, iterations, final_lambda, eps, "kexue.em_routing")
    B, n_in, n_out, H = votes.shape
    size = _history_size(iterations, n_in, n_out, H)
    # csrc/ops/em_routing.cpp's keeps_state()
    keeps = save_state and size <= n_in * n_out * H
    state = votes.new_empty((B, size) if keeps else (0,))
    return votes.new_empty((B, n_out, H)), votes.new_empty((B, n_out)), state


@torch.library.register_fake("kexue::em_routing_backward")
def _em_routing_backward_fake(grad_mu, grad_a, votes, a_in, beta_u, beta_a, iterations,
                              final_lambda, eps, state=None):
    op = "kexue.em_routing_backward"
    _check_inputs(votes, a_in, beta_u, beta_a, iterations, final_lambda, eps, op)
    if state is not None:
        C.like(votes, "votes", state, op, "state")
    if state is not None and state.numel() > 0:
        size = _history_size(iterations, votes.shape[1], votes.shape[2], votes.shape[3])
        C.check(state.dim() == 2 and state.shape[0] == votes.shape[0] and state.shape[1] == size, op,
                "state must be the forward's [", votes.shape[0], ", ", size, "] tensor, got ", C.sizes(state))
    C.like(votes, "votes", grad_mu, op, "grad_mu")
    C.like(votes, "votes", grad_a, op, "grad_a")
    B, _, n_out, H = votes.shape
    C.check(grad_mu.dim() == 3 and grad_mu.shape[0] == B and grad_mu.shape[1] == n_out and grad_mu.shape[2] == H, op,
            "grad_mu must have shape [", B, ", ", n_out, ", ", H, "], got ", C.sizes(grad_mu))
    C.check(grad_a.dim() == 2 and grad_a.shape[0] == B and grad_a.shape[1] == n_out, op, "grad_a must have shape [",
            B, ", ", n_out, "], got ", C.sizes(grad_a))
    return (votes.new_empty(votes.shape), a_in.new_empty(a_in.shape),
            beta_u.new_empty(beta_u.shape), beta_a.new_empty(beta_a.shape))


def reference_em_routing(
    votes: Tensor,
    a_in: Tensor,
    beta_u: Union[Tensor, float],
    beta_a: Union[Tensor, float],
    iterations: int = 3,
    *,
    final_lambda: float = 0.01,
    eps: float = 1e-6,
) -> Tuple[Tensor, Tensor]:
    """``em_routing`` written straight from the paper's procedure (autograd does the backward)."""
    bu, ba = _check_args(votes, a_in, beta_u, beta_a, iterations, eps)
    check_real(final_lambda, "final_lambda", _OP, nonnegative=True)
    V = votes  # [B, I, J, H]
    R = torch.full(V.shape[:3], 1.0 / V.shape[2], dtype=V.dtype, device=V.device)
    for t in range(iterations):
        lam = final_lambda * (t + 1) / iterations
        # M-step
        w = R * a_in.unsqueeze(-1)  # R_ij ← R_ij a_i
        S = w.sum(1)  # [B, J]
        D = (S + DENOM_EPS).unsqueeze(-1)
        mu = (w.unsqueeze(-1) * V).sum(1) / D  # [B, J, H]
        var = (w.unsqueeze(-1) * (V - mu.unsqueeze(1)) ** 2).sum(1) / D + eps
        cost = (bu.unsqueeze(-1) + 0.5 * torch.log(var)) * S.unsqueeze(-1)  # (β_u + log σ)·Σ R
        x = lam * (ba - cost.sum(-1))
        a = torch.sigmoid(x)
        if t + 1 < iterations:
            # E-step in the log domain
            d = V - mu.unsqueeze(1)
            log_p = (-d * d / (2 * var.unsqueeze(1)) - 0.5 * torch.log(var.unsqueeze(1))
                     - 0.5 * math.log(2 * math.pi)).sum(-1)  # [B, I, J]
            R = torch.softmax(torch.nn.functional.logsigmoid(x).unsqueeze(1) + log_p, dim=2)
    return mu, a


promote_under_autocast("em_routing", (0, 1, 2, 3), floor=torch.float32)
