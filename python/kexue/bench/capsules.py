"""Benchmark cases for dynamic routing at CapsNet's DigitCaps shape: û [B=128, 1152, 10, 16],
3 iterations, forward + backward (gradient through every iteration, and with the routing logits
detached). The baseline is the paper's pseudo-code in plain PyTorch (``reference_dynamic_routing``),
eager and compiled."""
from __future__ import annotations

from typing import List

import torch

from kexue.bench.harness import Case
from kexue.ops import dynamic_routing, reference_dynamic_routing


def _u_hat(b, n_in, n_out, d):
    def make(device):
        g = torch.Generator().manual_seed(0)
        return [(0.1 * torch.randn(b, n_in, n_out, d, generator=g)).to(device).requires_grad_()]
    return make


def cases(device: str) -> List[Case]:
    shape = (128, 1152, 10, 16)
    name = "×".join(map(str, shape)) + " r3"
    nbytes = lambda ins: ins[0].numel() * ins[0].element_size()
    out = []
    for detach in (False, True):
        out.append(Case(
            "dynamic_routing", name + (" detached" if detach else ""), "fwd+bwd", _u_hat(*shape),
            lambda u, detach=detach: dynamic_routing(u, 3, detach_routing=detach),
            lambda u, detach=detach: reference_dynamic_routing(u, 3, detach_routing=detach),
            grad_of=(0,), bytes_moved=nbytes))
    out.append(Case("dynamic_routing", name, "fwd", _u_hat(*shape),
                    lambda u: dynamic_routing(u, 3), lambda u: reference_dynamic_routing(u, 3),
                    bytes_moved=nbytes))
    return out
