"""Dynamic routing between capsules (Sabour, Frosst & Hinton 2017; MODELS.md C1).

``dynamic_routing`` runs a fused kernel forward and backward (math in csrc/kexue/capsules.h; the
autograd kernel is registered in C++, csrc/ops/capsules.cpp, and calls
``kexue::dynamic_routing_backward``; the forward keeps each iteration's c, s and v when they are
no larger than u_hat, and the backward reads them, else it recomputes the routing).
``reference_dynamic_routing`` is the paper's pseudo-code in plain PyTorch: the readable spec and
the test oracle.

Squash functions, with q = ‖s‖² and eps = 1e-12 (so s = 0 gives 0, never NaN):
  ``"sabour"``: q/(1 + q) · s/sqrt(q + eps)      (the paper)
  ``"post"``:   q/(0.5 + q) · s/sqrt(q + eps)    (the variant of the kexue.fm capsule posts,
                                                 which grows faster near 0)
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

from kexue.ops import _checks as C
from kexue.ops._common import acc_dtype, check_int

MAX_ITERATIONS = 1000  # csrc/kexue/capsules.h's kMaxIterations
SQUASHES = {"sabour": 1.0, "post": 0.5}
SQUASH_EPS = 1e-12
Tensor = torch.Tensor


def _check_args(u_hat: Tensor, iterations: int, squash: str) -> None:
    if not isinstance(u_hat, Tensor):
        raise TypeError(f"kexue.ops.dynamic_routing: u_hat must be a tensor, got {type(u_hat).__name__}")
    if squash not in SQUASHES:
        raise ValueError(
            f"kexue.ops.dynamic_routing: squash must be one of {tuple(SQUASHES)}, got {squash!r}")
    check_int(iterations, "iterations", "kexue.ops.dynamic_routing", maximum=MAX_ITERATIONS)
    if u_hat.dim() != 4:
        raise ValueError(
            "kexue.ops.dynamic_routing: u_hat must have shape [B, N_in, N_out, D], got "
            f"{tuple(u_hat.shape)}")


def dynamic_routing(
    u_hat: Tensor,
    iterations: int = 3,
    *,
    squash: str = "sabour",
    return_couplings: bool = False,
    detach_routing: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Routing-by-agreement: predictions ``u_hat`` [B, N_in, N_out, D] → capsules v [B, N_out, D].

    b = 0; repeat ``iterations`` times: c = softmax_j(b); s_j = Σ_i c_ij û_{j|i};
    v_j = squash(s_j); if not the last: b_ij += û_{j|i}·v_j.

    The gradient flows through every iteration (as autograd through the unrolled reference).
    ``detach_routing=True`` treats the routing logits b as constants: the gradient then flows only
    through the final s = Σ_i c_ij û_{j|i} with c held fixed (cheaper, and a common training
    choice). ``return_couplings=True`` also returns the final c [B, N_in, N_out] (rows sum to 1
    over N_out; not differentiable).
    """
    _check_args(u_hat, iterations, squash)
    # The forward keeps its per-iteration state for the backward when one will run (within
    # u_hat's own size; otherwise the backward recomputes the routing).
    save_state = torch.is_grad_enabled() and u_hat.requires_grad
    v, c, _ = torch.ops.kexue.dynamic_routing(u_hat, int(iterations), squash, bool(detach_routing), save_state)
    return (v, c) if return_couplings else v


def _check_u_hat(u_hat, iterations, squash, op):
    """csrc/ops/capsules.cpp's parse_squash() and check_u_hat()."""
    C.check(squash in ("sabour", "post"), op, "squash must be one of 'sabour', 'post', got '", squash, "'")
    C.device_supported(u_hat, op)
    C.float_dtype(u_hat, op, "u_hat")
    C.check(u_hat.dim() == 4, op, "u_hat must have shape [B, N_in, N_out, D], got ", u_hat.dim(),
            "-d tensor of shape ", C.sizes(u_hat))
    C.check(iterations >= 1, op, "iterations must be >= 1, got ", iterations)
    C.check(iterations <= MAX_ITERATIONS, op, "iterations must be at most ", MAX_ITERATIONS,
            " (the backward keeps every iteration), got ", iterations)


def _state_size(iterations, n_in, n_out, D):
    """csrc/kexue/capsules.h's state_size: c^(r), s^(r), v^(r) of one sample."""
    return iterations * n_in * n_out + 2 * iterations * n_out * D


def _keeps_state(u_hat, iterations, save_state):
    """csrc/ops/capsules.cpp's keeps_state(): asked for, no larger than u_hat."""
    _, n_in, n_out, D = u_hat.shape
    acc = acc_dtype(u_hat.dtype)
    return save_state and _state_size(iterations, n_in, n_out, D) * acc.itemsize <= n_in * n_out * D * u_hat.element_size()


@torch.library.register_fake("kexue::dynamic_routing")
def _dynamic_routing_fake(u_hat, iterations, squash, detach_routing, save_state=False):
    _check_u_hat(u_hat, iterations, squash, "kexue.dynamic_routing")
    B, n_in, n_out, D = u_hat.shape
    acc = acc_dtype(u_hat.dtype)
    state = (u_hat.new_empty((B, _state_size(iterations, n_in, n_out, D)), dtype=acc)
             if _keeps_state(u_hat, iterations, save_state) else u_hat.new_empty((0,), dtype=acc))
    return u_hat.new_empty((B, n_out, D)), u_hat.new_empty((B, n_in, n_out)), state


@torch.library.register_fake("kexue::dynamic_routing_backward")
def _dynamic_routing_backward_fake(grad_v, u_hat, iterations, squash, detach_routing, state=None):
    op = "kexue.dynamic_routing_backward"
    _check_u_hat(u_hat, iterations, squash, op)
    C.like(u_hat, "u_hat", grad_v, op, "grad_v")
    B, n_in, n_out, D = u_hat.shape
    C.check(grad_v.dim() == 3 and grad_v.shape[0] == B and grad_v.shape[1] == n_out and grad_v.shape[2] == D, op,
            "grad_v must have shape [", B, ", ", n_out, ", ", D, "], got ", C.sizes(grad_v))
    if state is not None:
        C.like(u_hat, "u_hat", state, op, "state", same_dtype=False)
    if state is not None and state.numel() > 0:
        size = _state_size(iterations, n_in, n_out, D)
        C.check(state.dtype == acc_dtype(u_hat.dtype) and state.dim() == 2 and state.shape[0] == B
                and state.shape[1] == size, op, "state must be the forward's [", B, ", ", size, "] ",
                C.dtype_name(acc_dtype(u_hat.dtype)), " tensor, got ", C.sizes(state), " ", C.dtype_name(state.dtype))
    return u_hat.new_empty(u_hat.shape)


def reference_squash(s: Tensor, squash: str = "sabour") -> Tensor:
    k = SQUASHES[squash]
    q = (s * s).sum(-1, keepdim=True)
    return q / (k + q) * s / torch.sqrt(q + SQUASH_EPS)


def reference_dynamic_routing(
    u_hat: Tensor,
    iterations: int = 3,
    *,
    squash: str = "sabour",
    return_couplings: bool = False,
    detach_routing: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """``dynamic_routing`` written straight from the paper's Procedure 1 (autograd does the
    backward; half inputs are computed in fp32 and rounded at the end, like the kernel)."""
    _check_args(u_hat, iterations, squash)
    dtype = u_hat.dtype
    u = u_hat if dtype == torch.float64 else u_hat.float()
    b = torch.zeros(u.shape[:3], dtype=u.dtype, device=u.device)  # b_ij = 0
    for r in range(iterations):
        c = torch.softmax(b, dim=2)  # c_i = softmax(b_i) over the output capsules j
        if detach_routing:
            c = c.detach()
        s = (c.unsqueeze(-1) * u).sum(1)  # s_j = Σ_i c_ij û_{j|i}
        v = reference_squash(s, squash)  # v_j = squash(s_j)
        if r + 1 < iterations:
            b = b + (u * v.unsqueeze(1)).sum(-1)  # b_ij += û_{j|i}·v_j
    v, c = v.to(dtype), c.detach().to(dtype)
    return (v, c) if return_couplings else v
