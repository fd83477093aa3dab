"""RoPE attention benchmarks: the fused op against the reference (explicit rotation, materialized
mask, softmax attention in plain torch) with the UniLM mask + RoPE and with a causal mask.
CPU: float32, B=2, H=8, L=512, d=64. GPU: bf16, L ∈ {1k, 4k} (the reference materializes L×L)."""
from __future__ import annotations

from typing import List

import torch

from kexue.bench.harness import Case
from kexue.nn import RoPE
from kexue.ops.attention import reference_rope_attention, rope_attention


def _inputs(B, H, L, d, dtype):
    def make(device):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, H, L, d, generator=g).to(device=device, dtype=dtype).requires_grad_() for _ in range(3))
        seg = torch.zeros(B, L, dtype=torch.long)
        seg[:, L // 2:] = 1
        return [q, k, v, seg.to(device)]
    return make


def cases(device: str) -> List[Case]:
    gpu = device.startswith("cuda")
    dtype = torch.bfloat16 if gpu else torch.float32
    shapes = [(2, 8, 1024, 64), (1, 8, 4096, 128)] if gpu else [(2, 8, 512, 64)]
    out = []
    for B, H, L, d in shapes:
        rope = RoPE(d)
        name = f"B{B} H{H} L{L} d{d}"
        unilm = dict(rope=rope, mask_rule="unilm")
        for mode, grad_of in (("fwd+bwd", (0, 1, 2)), ("fwd", ())):
            out.append(Case("rope_attention", name + " UniLM+RoPE", mode, _inputs(B, H, L, d, dtype),
                            lambda q, k, v, s: rope_attention(q, k, v, segment_ids=s, **unilm),
                            lambda q, k, v, s: reference_rope_attention(q, k, v, segment_ids=s, **unilm),
                            grad_of=grad_of))
            out.append(Case("rope_attention", name + " causal+RoPE", mode, _inputs(B, H, L, d, dtype),
                            lambda q, k, v, s: rope_attention(q, k, v, rope=rope, causal=True),
                            lambda q, k, v, s: reference_rope_attention(q, k, v, rope=rope, causal=True),
                            grad_of=grad_of))
    return out
