"""Benchmark cases for the invertible-ResNet log-det ops at the goal's shapes: B = 1024,
D ∈ {2, 16, 64}, hidden 128, 10 terms, forward + backward. The baseline is the i-ResNet
paper's approach (vector-Jacobian products through autograd, graph kept for the backward);
the exact-trace series is compared with its matrix-power loop."""
from __future__ import annotations

from typing import List

import torch

from kexue.bench.harness import Case
from kexue.ops import (
    iresnet_mlp_logdet, logdet_power_series, reference_iresnet_mlp_logdet, reference_logdet_power_series,
)


def _mlp_inputs(b, d, h):
    def make(device):
        g = torch.Generator().manual_seed(0)
        W1 = torch.randn(h, d, generator=g) * 0.9 / (h ** 0.5 + d ** 0.5)
        W2 = torch.randn(d, h, generator=g) * 0.9 / (h ** 0.5 + d ** 0.5)
        ts = [torch.randn(b, d, generator=g), W1, torch.randn(h, generator=g), W2, torch.randn(d, generator=g),
              torch.randn(b, d, generator=g)]
        return [t.to(device).requires_grad_(i < 4) for i, t in enumerate(ts)]
    return make


def _jacobians(b, d):
    def make(device):
        g = torch.Generator().manual_seed(0)
        J = torch.randn(b, d, d, generator=g)
        return [(0.5 * J / torch.linalg.matrix_norm(J, 2)[:, None, None]).to(device).requires_grad_()]
    return make


def cases(device: str) -> List[Case]:
    out = []
    for d in (2, 16, 64):
        out.append(Case(
            "iresnet_mlp_logdet", f"B1024 D{d} H128 n10", "fwd+bwd", _mlp_inputs(1024, d, 128),
            lambda *a: iresnet_mlp_logdet(*a, 10, "elu"), lambda *a: reference_iresnet_mlp_logdet(*a, 10, "elu"),
            grad_of=(0, 1, 2, 3), compile_reference=False))
    for d in (16, 64):
        out.append(Case(
            "logdet_power_series", f"B1024 D{d} n10", "fwd+bwd", _jacobians(1024, d),
            lambda J: logdet_power_series(J, 10), lambda J: reference_logdet_power_series(J, 10), grad_of=(0,)))
    return out
