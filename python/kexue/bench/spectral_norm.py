"""Benchmark cases for spectral normalisation: the cost of σ per training step.

A step is what a spectral-normalised layer does each training iteration: one power-iteration step
on the persistent u, v, the normalised weight W / σ, and the backward of the weight's use (here
with a fixed random cotangent G, so only the normalisation's own backward is timed). Ours:
``spectral_normalize`` (fused power iteration + ``spectral_normalize_weight``); the baseline is
``torch.nn.utils.parametrizations.spectral_norm`` doing the same (weight access in training mode,
then backward). Shapes: an SN-GAN discriminator's 512×4608 (512 3×3 convs over 512 channels) and
64×576 (64 3×3 over 64), and a whole network's 30 layers of mixed sizes through the grouped op.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from kexue.bench.harness import Case
from kexue.ops import (
    reference_spectral_norm_power_iteration,
    spectral_norm_power_iteration,
    spectral_norm_power_iteration_grouped,
    spectral_normalize,
    spectral_normalize_weight,
)

# 30 layers: conv kernels as [out, in·k·k] of a small SN-GAN discriminator and an MLP head.
GROUP_SIZES: List[Tuple[int, int]] = [
    (64, 27), (64, 576), (128, 576), (128, 1152), (256, 1152),
    (256, 2304), (512, 2304), (1, 2048), (128, 128), (64, 64),
] * 3


def _layer(shape, device, seed):
    """A Linear with torch's spectral norm, and our copies of its weight and u, v."""
    torch.manual_seed(seed)
    lin = torch.nn.Linear(shape[1], shape[0], bias=False).to(device)
    torch_spectral_norm(lin)
    lin.train()
    sn = lin.parametrizations.weight[0]
    W = lin.parametrizations.weight.original.detach().clone().requires_grad_()
    G = torch.randn(shape, device=device)
    return lin, W, sn._u.detach().clone(), sn._v.detach().clone(), G


def step_case(shape) -> Case:
    def make(device):
        lin, W, u, v, G = _layer(shape, device, 0)
        return [W, u, v, G, lin]

    def ours(W, u, v, G, lin):
        W_sn, _ = spectral_normalize(W, u, v, mode="exact", n_iter=1)
        return torch.autograd.grad(W_sn, W, G)

    def torch_parametrization(W, u, v, G, lin):
        return torch.autograd.grad(lin.weight, lin.parametrizations.weight.original, G)

    return Case("spectral-norm", "×".join(map(str, shape)) + " σ/step", "step", make, ours,
                torch_parametrization, compile_reference=False)


def power_iteration_case(shape) -> Case:
    def make(device):
        _, W, u, v, _ = _layer(shape, device, 0)
        return [W.detach(), u, v]

    return Case("spectral-norm", "×".join(map(str, shape)) + " power iter", "fwd", make,
                lambda W, u, v: spectral_norm_power_iteration(W, u, v),
                lambda W, u, v: reference_spectral_norm_power_iteration(W, u, v),
                bytes_moved=lambda ins: ins[0].numel() * ins[0].element_size())


def grouped_case(sizes: Sequence[Tuple[int, int]] = GROUP_SIZES) -> Case:
    def make(device):
        layers = [_layer(s, device, i) for i, s in enumerate(sizes)]
        lins, Ws, us, vs, Gs = (list(x) for x in zip(*layers))
        return [Ws, us, vs, Gs, lins]

    def ours(Ws, us, vs, Gs, lins):
        with torch.no_grad():
            spectral_norm_power_iteration_grouped(Ws, us, vs)
        outs = [spectral_normalize_weight(W, u, v, mode="exact")[0] for W, u, v in zip(Ws, us, vs)]
        return torch.autograd.grad(outs, Ws, Gs)

    def torch_parametrizations(Ws, us, vs, Gs, lins):
        outs = [lin.weight for lin in lins]
        return torch.autograd.grad(outs, [lin.parametrizations.weight.original for lin in lins], Gs)

    return Case("spectral-norm", f"{len(sizes)} layers grouped σ/step", "step", make, ours,
                torch_parametrizations, compile_reference=False)


def cases(device: str) -> List[Case]:
    return [
        step_case((512, 4608)),
        step_case((64, 576)),
        grouped_case(),
        power_iteration_case((512, 4608)),
        power_iteration_case((64, 576)),
    ]
