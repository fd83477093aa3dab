"""Benchmark cases for dynamic routing at CapsNet's DigitCaps shape: û [B=128, 1152, 10, 16],
3 iterations, forward + backward (gradient through every iteration, and with the routing logits
detached). The baseline is the paper's pseudo-code in plain PyTorch (``reference_dynamic_routing``),
eager and compiled.

EM routing (Hinton et al. 2018) at the matrix-capsule network's sizes (4×4 poses, H = 16,
3 iterations), forward + backward to votes, a_in, beta_u, beta_a:
  class capsules: B = 64, N_in = 32 types·4·4 positions = 512, N_out = 10 classes;
  ConvCaps2: 32 types in a 3×3 kernel, N_in = 288, N_out = 32 types, B = 16 images·4·4
  positions = 256 routing groups (conv capsules routed per output position, no overlap sharing).
The baseline is ``reference_em_routing`` (the paper's procedure in plain PyTorch)."""
from __future__ import annotations

from typing import List

import torch

from kexue.bench.harness import Case
from kexue.ops import dynamic_routing, em_routing, reference_dynamic_routing, reference_em_routing


def _u_hat(b, n_in, n_out, d):
    def make(device):
        g = torch.Generator().manual_seed(0)
        return [(0.1 * torch.randn(b, n_in, n_out, d, generator=g)).to(device).requires_grad_()]
    return make


def _em_inputs(b, n_in, n_out, h):
    def make(device):
        g = torch.Generator().manual_seed(0)
        ins = [torch.randn(b, n_in, n_out, h, generator=g), torch.rand(b, n_in, generator=g),
               0.1 * torch.randn(n_out, generator=g), 0.1 * torch.randn(n_out, generator=g)]
        return [t.to(device).requires_grad_() for t in ins]
    return make


def em_cases(device: str) -> List[Case]:
    nbytes = lambda ins: ins[0].numel() * ins[0].element_size()
    out = []
    for label, shape in (("class caps", (64, 512, 10, 16)), ("ConvCaps2", (256, 288, 32, 16))):
        name = f"{label} " + "×".join(map(str, shape)) + " r3"
        for mode, grad_of in (("fwd+bwd", (0, 1, 2, 3)), ("fwd", ())):
            out.append(Case("em_routing", name, mode, _em_inputs(*shape),
                            lambda V, a, bu, ba: em_routing(V, a, bu, ba, 3),
                            lambda V, a, bu, ba: reference_em_routing(V, a, bu, ba, 3),
                            grad_of=grad_of, bytes_moved=nbytes))
    return out


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
    return out + em_cases(device)
