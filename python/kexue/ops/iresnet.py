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

from kexue.ops._common import acc_dtype, empty_grad

Tensor = torch.Tensor
ACTIVATIONS = ("elu", "lipswish", "tanh", "softplus")
LIPSWISH_SCALE = 1.1  # swish's Lipschitz constant is ~1.0998


def _check_terms(n_terms: int, name: str) -> int:
    if isinstance(n_terms, bool) or not isinstance(n_terms, int) or n_terms < 1:
        raise ValueError(f"{name}: n_terms must be an integer >= 1, got {n_terms!r}")
    return n_terms


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
    return torch.ops.kexue.iresnet_mlp_logdet(x, W1, b1, W2, b2, v, n, activation)


@torch.library.register_fake("kexue::logdet_power_series")
def _series_fake(J, n_terms):
    return J.new_empty((J.shape[0],), dtype=acc_dtype(J.dtype))


@torch.library.register_fake("kexue::logdet_power_series_backward")
def _series_backward_fake(grad, J, n_terms):
    return J.new_empty(J.shape)


@torch.library.register_fake("kexue::iresnet_mlp_logdet")
def _mlp_fake(x, W1, b1, W2, b2, v, n_terms, activation):
    return x.new_empty((x.shape[0],), dtype=acc_dtype(x.dtype))


@torch.library.register_fake("kexue::iresnet_mlp_logdet_backward")
def _mlp_backward_fake(grad, x, W1, b1, W2, v, n_terms, activation, output_mask):
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
