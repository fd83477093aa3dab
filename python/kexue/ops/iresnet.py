"""Invertible-ResNet log-determinants (Behrmann et al. 2019; post 细水长flow之可逆ResNet).

``log det(I + J) = Σ_{k≥1} (−1)^{k+1} tr(J^k)/k`` for Lip(g) < 1, truncated at ``n_terms``:
``logdet_power_series`` with exact traces of explicit Jacobians, and ``iresnet_mlp_logdet``
with Hutchinson's estimator ``vᵀJ^k v`` for an MLP block, computed in C++ from batched matrix
products (no Python loop, no autograd graph over the series) forward and backward.
``reference_*`` are the plain-PyTorch versions (the second as the i-ResNet paper's code does
it: vector-Jacobian products through autograd).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kexue.ops import _checks as C
from kexue.ops._common import acc_dtype, check_int, empty_grad

Tensor = torch.Tensor
ACTIVATIONS = ("elu", "lipswish", "tanh", "softplus")
LIPSWISH_SCALE = 1.1  # swish's Lipschitz constant is ~1.0998


MAX_TERMS = 1024  # csrc/ops/iresnet.cpp's kMaxTerms


def _check_terms(n_terms: int, name: str) -> int:
    return check_int(n_terms, "n_terms", name, maximum=MAX_TERMS)


def logdet_power_series(J: Tensor, n_terms: int) -> Tensor:
    """``Σ_{k=1..n} (−1)^{k+1} tr(J^k)/k`` per sample for ``J`` [B, D, D] (exact traces), with
    backward. Converges to log det(I + J) when the spectral radius of J is below 1."""
    return torch.ops.kexue.logdet_power_series(J, _check_terms(n_terms, "logdet_power_series"))


def iresnet_mlp_logdet(x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, v: Tensor, n_terms: int,
                       activation: str = "lipswish") -> Tensor:
    """Hutchinson estimate ``Σ_k (−1)^{k+1} vᵀJ^k v / k`` of log det(I + J_g(x)) per sample for
    ``g(x) = W2·act(W1 x + b1) + b2`` (x, v: [B, D]; W1 [H, D]; W2 [D, H]). Unbiased for the
    truncated series when E[v vᵀ] = I (Gaussian or Rademacher v). Differentiable in x, W1, b1, W2."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"iresnet_mlp_logdet: activation must be one of {ACTIVATIONS}, got {activation!r}")
    n = _check_terms(n_terms, "iresnet_mlp_logdet")
    # The forward keeps the products the backward needs when one will run (csrc/ops/iresnet.cpp).
    save_state = torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in (x, W1, b1, W2))
    out, _ = torch.ops.kexue.iresnet_mlp_logdet(x, W1, b1, W2, b2, v, n, activation, save_state)
    return out


# ---- fake kernels: csrc/ops/iresnet.cpp's checks, in its order -------------------------------------


def _check_n(n, op):
    C.check(1 <= n <= MAX_TERMS, op, "n_terms must be in [1, ", MAX_TERMS, "], got ", n)


def _check_jacobian(J, op):
    C.device_supported(J, op)
    C.float_dtype(J, op, "J")
    C.check(J.dim() == 3 and J.shape[1] == J.shape[2], op, "J must be a batch of square matrices [B, D, D], got ",
            C.sizes(J))


def _check_mlp(x, W1, b1, W2, b2, v, activation, op):
    C.device_supported(x, op)
    C.float_dtype(x, op, "x")
    C.check(x.dim() == 2, op, "x must be [B, D], got ", C.sizes(x))
    D = x.shape[1]
    C.check(W1.dim() == 2 and W1.shape[1] == D, op, "W1 must be [H, ", D, "], got ", C.sizes(W1))
    H = W1.shape[0]
    C.check(b1.dim() == 1 and b1.shape[0] == H, op, "b1 must be [", H, "], got ", C.sizes(b1))
    C.check(W2.dim() == 2 and W2.shape[0] == D and W2.shape[1] == H, op, "W2 must be [", D, ", ", H, "], got ",
            C.sizes(W2))
    if b2 is not None:
        C.check(b2.dim() == 1 and b2.shape[0] == D, op, "b2 must be [", D, "], got ", C.sizes(b2))
    C.same_shape(x, "x", v, op, "v")
    for t, name in ((W1, "W1"), (b1, "b1"), (W2, "W2"), (b2, "b2"), (v, "v")):
        if t is not None:
            C.like(x, "x", t, op, name, same_dtype=False)
            C.float_dtype(t, op, name)
    C.check(activation in ACTIVATIONS, op, "activation must be one of 'elu', 'lipswish', 'tanh', 'softplus', got '",
            activation, "'")


@torch.library.register_fake("kexue::logdet_power_series")
def _series_fake(J, n_terms):
    op = "kexue.logdet_power_series"
    _check_n(n_terms, op)
    _check_jacobian(J, op)
    return J.new_empty((J.shape[0],), dtype=acc_dtype(J.dtype))


@torch.library.register_fake("kexue::logdet_power_series_backward")
def _series_backward_fake(grad, J, n_terms):
    op = "kexue.logdet_power_series_backward"
    _check_n(n_terms, op)
    _check_jacobian(J, op)
    C.check(grad.dim() == 1 and grad.shape[0] == J.shape[0], op, "grad must have shape [", J.shape[0], "], got ",
            C.sizes(grad))
    C.check(grad.device == J.device, op, "grad must be on ", J.device, " like J, got ", grad.device)
    return J.new_empty(J.shape)


_STATE_BUDGET = 256 << 20  # bytes: csrc/ops/iresnet.cpp's kStateBudget


def _state_numel(x, W1, n):
    """csrc/ops/iresnet.cpp's state_numel; 0 where the forward keeps no state (explicit Jacobians)."""
    (B, D), H = x.shape, W1.shape[0]
    return n * B * (D + H) + 2 * B * H if D > n else 0


@torch.library.register_fake("kexue::iresnet_mlp_logdet")
def _mlp_fake(x, W1, b1, W2, b2, v, n_terms, activation, save_state=False):
    op = "kexue.iresnet_mlp_logdet"
    _check_n(n_terms, op)
    _check_mlp(x, W1, b1, W2, b2, v, activation, op)
    acc = acc_dtype(x.dtype)
    numel = _state_numel(x, W1, n_terms)
    keeps = save_state and numel > 0 and numel * acc.itemsize <= _STATE_BUDGET
    return x.new_empty((x.shape[0],), dtype=acc), x.new_empty((numel if keeps else 0,), dtype=acc)


@torch.library.register_fake("kexue::iresnet_mlp_logdet_backward")
def _mlp_backward_fake(grad, x, W1, b1, W2, v, n_terms, activation, output_mask, state=None):
    op = "kexue.iresnet_mlp_logdet_backward"
    _check_n(n_terms, op)
    _check_mlp(x, W1, b1, W2, None, v, activation, op)
    C.check(grad.dim() == 1 and grad.shape[0] == x.shape[0], op, "grad must have shape [", x.shape[0], "], got ",
            C.sizes(grad))
    C.check(grad.device == x.device, op, "grad must be on ", x.device, " like x, got ", grad.device)
    if state is not None:
        arg = "state (in x's accumulation dtype)"
        C.check(state.device == x.device, op, arg, " must be on ", x.device, " like x, got ", state.device)
        C.check(state.dtype == acc_dtype(x.dtype), op, arg, " must have dtype ", C.dtype_name(acc_dtype(x.dtype)),
                " like x, got ", C.dtype_name(state.dtype))
        numel = _state_numel(x, W1, n_terms)
        C.check(state.numel() == 0 or (numel > 0 and state.dim() == 1 and state.shape[0] == numel), op,
                "state must be the forward's [", numel, "] tensor, got ", C.sizes(state))
    return (empty_grad(x, output_mask[0]), empty_grad(W1, output_mask[1]), empty_grad(b1, output_mask[2]),
            empty_grad(W2, output_mask[3]))


def activation_fn(name: str):
    """The activation as a torch function (used by the layers and the references)."""
    if name == "lipswish":
        return lambda h: h * torch.sigmoid(h) / LIPSWISH_SCALE
    return {"elu": F.elu, "tanh": torch.tanh, "softplus": F.softplus}[name]


def reference_logdet_power_series(J: Tensor, n_terms: int) -> Tensor:
    J = J.to(acc_dtype(J.dtype))
    out, P = J.new_zeros(J.shape[0]), J
    for k in range(1, n_terms + 1):
        if k > 1:
            P = P @ J
        out = out + (-1) ** (k + 1) * torch.diagonal(P, dim1=1, dim2=2).sum(1) / k
    return out


def reference_iresnet_mlp_logdet(x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, v: Tensor,
                                 n_terms: int, activation: str = "lipswish") -> Tensor:
    """The i-ResNet paper's way: vᵀ(J^T)^k v by repeated vector-Jacobian products through
    autograd, keeping the graph so the estimate can be differentiated."""
    act = activation_fn(activation)
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_()
        g = act(xg @ W1.t() + b1) @ W2.t() + b2
        w, out = v, x.new_zeros(x.shape[0])
        for k in range(1, n_terms + 1):
            (w,) = torch.autograd.grad(g, xg, w, create_graph=True)
            out = out + (-1) ** (k + 1) * (w * v).sum(1) / k
    return out
