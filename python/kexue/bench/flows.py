"""Benchmark cases for the flow ops (coupling, actnorm), at the shapes of the real models:
NICE/RealNVP on flattened 28×28 images ([256, 784]) and a Glow level on 8×8×3 digits after a
squeeze ([64, 12, 16, 16]). On GPU, large tensors (≥ 64 MB) for bandwidth."""
from __future__ import annotations

from typing import List

import torch

from kexue.bench.harness import Case
from kexue.ops import actnorm, coupling, reference_actnorm, reference_coupling


def _coupling_inputs(shape, dtype, requires_grad):
    def make(device):
        g = torch.Generator().manual_seed(0)
        xs = [torch.randn(shape, generator=g).to(device=device, dtype=dtype) for _ in range(3)]
        xs[1] = xs[1] * 0.5
        return [v.requires_grad_(requires_grad) for v in xs]
    return make


def _actnorm_inputs(shape, dtype, requires_grad):
    def make(device):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        b, ls = (0.1 * torch.randn(shape[1], generator=g)).to(device), (0.1 * torch.randn(shape[1], generator=g)).to(device)
        return [v.requires_grad_(requires_grad) for v in (x, b, ls)]
    return make


def _nbytes(t):
    return t.numel() * t.element_size()


def coupling_case(shape, scale, mode, dtype=torch.float32):
    bwd = mode == "fwd+bwd"
    ours = lambda x, s, t: coupling(x, s, t, scale=scale)
    ref = lambda x, s, t: reference_coupling(x, s, t, scale=scale)
    # forward: read x, s, t, write y; backward adds: read g, x, s, write gx, gs, gt
    moved = (lambda ins: 4 * _nbytes(ins[0])) if not bwd else (lambda ins: 10 * _nbytes(ins[0]))
    name = "×".join(map(str, shape)) + f" {scale}"
    return Case("coupling", name, mode, _coupling_inputs(shape, dtype, bwd), ours, ref,
                grad_of=(0, 1, 2) if bwd else (), bytes_moved=moved)


def actnorm_case(shape, mode, dtype=torch.float32):
    bwd = mode == "fwd+bwd"
    moved = (lambda ins: 2 * _nbytes(ins[0])) if not bwd else (lambda ins: 5 * _nbytes(ins[0]))
    return Case("actnorm", "×".join(map(str, shape)), mode, _actnorm_inputs(shape, dtype, bwd),
                lambda x, b, ls: actnorm(x, b, ls), lambda x, b, ls: reference_actnorm(x, b, ls),
                grad_of=(0, 1, 2) if bwd else (), bytes_moved=moved)


def cases(device: str) -> List[Case]:
    out = [
        coupling_case((256, 784), "exp", "fwd+bwd"),
        coupling_case((64, 12, 16, 16), "exp", "fwd+bwd"),
        coupling_case((64, 12, 16, 16), "sigmoid", "fwd+bwd"),
        coupling_case((256, 784), "exp", "fwd"),
        coupling_case((64, 12, 16, 16), "sigmoid", "fwd"),
        actnorm_case((64, 12, 16, 16), "fwd+bwd"),
    ]
    if device.startswith("cuda"):
        big = (256, 3, 128, 256)  # 25.2M elements: 100 MB per fp32 tensor
        out += [
            coupling_case(big, "exp", "fwd"),
            coupling_case(big, "sigmoid", "fwd"),
            coupling_case(big, "exp", "fwd", torch.bfloat16),
            coupling_case(big, "exp", "fwd+bwd"),
            coupling_case(big, "sigmoid", "fwd+bwd", torch.bfloat16),
            actnorm_case(big, "fwd"),
            actnorm_case(big, "fwd+bwd"),
        ]
    return out
