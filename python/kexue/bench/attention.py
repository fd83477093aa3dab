"""RoPE attention benchmarks: the fused op against the reference (explicit rotation, materialized
mask, softmax attention in plain torch) with the UniLM mask + RoPE and with a causal mask.

CPU: float32, B=2, H=8, L=512, d=64. GPU: bf16, L ∈ {1k, 4k, 16k}, d ∈ {64, 128}, forward +
backward with the UniLM mask. On both, against two peers that get RoPE as separate torch ops
(on the CPU FlexAttention only in the forward: it has no CPU backward):
FlexAttention with the same mask as a BlockMask (built once, outside the timing; its build time
is printed to stderr) and SDPA with the materialized boolean mask. Causal forward cases at
d = 128 also report TFLOP/s (4·B·H·L²·d / 2 useful FLOPs)."""
from __future__ import annotations

import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from kexue.bench.harness import Case
from kexue.nn import RoPE
from kexue.ops.attention import attention_mask, reference_apply_rope, reference_rope_attention, rope_attention


def _inputs(B, H, L, d, dtype):
    def make(device):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, H, L, d, generator=g).to(device=device, dtype=dtype).requires_grad_() for _ in range(3))
        seg = torch.zeros(B, L, dtype=torch.long)
        seg[:, L // 2:] = 1
        return [q, k, v, seg.to(device)]
    return make


def _unilm_mask_mod(seg: torch.Tensor):
    src_len = (seg == 0).sum(1)

    def mask_mod(b, h, q_idx, kv_idx):
        s = src_len[b]
        return (kv_idx < s) | ((q_idx >= s) & (kv_idx <= q_idx))
    return mask_mod


def _peers(rope: RoPE, causal: bool, label: str) -> Dict[str, Callable]:
    """FlexAttention and SDPA with the mask of this case, RoPE as separate ops; {} without flex."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:  # an older torch: no FlexAttention
        return {}
    flex = torch.compile(flex_attention)
    cache = {}

    def block_mask(seg, L):
        key = (seg.data_ptr(), L)
        if key not in cache:
            mod = (lambda b, h, q, kv: q >= kv) if causal else _unilm_mask_mod(seg)
            sync = torch.cuda.synchronize if seg.is_cuda else (lambda: None)
            sync()
            start = time.perf_counter()
            cache[key] = create_block_mask(mod, seg.shape[0] if not causal else None, None, L, L, device=seg.device)
            sync()
            print(f"# {label}: FlexAttention BlockMask build {1e3 * (time.perf_counter() - start):.2f} ms",
                  file=sys.stderr)
        return cache[key]

    def rotated(q, k):
        return reference_apply_rope(q, None, rope), reference_apply_rope(k, None, rope)

    def flex_peer(q, k, v, s):
        qr, kr = rotated(q, k)
        if not torch.is_grad_enabled():  # it refuses inputs that require grad where it has no backward
            v = v.detach()
        return flex(qr, kr, v, block_mask=block_mask(s, q.shape[2]))

    dense = {}

    def sdpa_peer(q, k, v, s):
        L = q.shape[2]
        key = (s.data_ptr(), L)
        if key not in dense:  # built once, like the BlockMask
            dense[key] = attention_mask(q.shape[0], 1, L, L, causal=causal,
                                        segment_ids=None if causal else s, device=q.device)
        qr, kr = rotated(q, k)
        return F.scaled_dot_product_attention(qr, kr, v, attn_mask=dense[key])

    return {"flex": flex_peer, "sdpa": sdpa_peer}


def _gpu_cases() -> List[Case]:
    out = []
    for B, H, L in ((16, 16, 1024), (4, 16, 4096), (1, 16, 16384)):
        for d in (64, 128):
            rope = RoPE(d)
            name = f"B{B} H{H} L{L} d{d}"
            big = L > 4096  # the eager and compiled references materialize L×L scores
            out.append(Case("rope_attention", name + " UniLM+RoPE", "fwd+bwd", _inputs(B, H, L, d, torch.bfloat16),
                            lambda q, k, v, s, rope=rope: rope_attention(q, k, v, segment_ids=s, rope=rope),
                            lambda q, k, v, s, rope=rope: reference_rope_attention(q, k, v, segment_ids=s, rope=rope),
                            grad_of=(0, 1, 2), peers=_peers(rope, False, name), compile_reference=not big))
        rope = RoPE(128)
        name = f"B{B} H{H} L{L} d128"
        out.append(Case("rope_attention", name + " causal+RoPE", "fwd", _inputs(B, H, L, 128, torch.bfloat16),
                        lambda q, k, v, s, rope=rope: rope_attention(q, k, v, rope=rope, causal=True),
                        lambda q, k, v, s, rope=rope: reference_rope_attention(q, k, v, rope=rope, causal=True),
                        peers=_peers(rope, True, name + " causal"), compile_reference=L <= 4096,
                        flops=lambda inputs: 2 * inputs[0].shape[0] * inputs[0].shape[1] * inputs[0].shape[2] ** 2
                        * inputs[0].shape[3]))
    return out


def _cpu_cases() -> List[Case]:
    out = []
    B, H, L, d = 2, 8, 512, 64
    rope = RoPE(d)
    name = f"B{B} H{H} L{L} d{d}"
    def cpu_peers(causal, label, mode):  # FlexAttention has no CPU backward (torch 2.13)
        peers = _peers(rope, causal, label)
        return {k: f for k, f in peers.items() if mode == "fwd" or k != "flex"}

    for mode, grad_of in (("fwd+bwd", (0, 1, 2)), ("fwd", ())):
        out.append(Case("rope_attention", name + " UniLM+RoPE", mode, _inputs(B, H, L, d, torch.float32),
                        lambda q, k, v, s: rope_attention(q, k, v, segment_ids=s, rope=rope),
                        lambda q, k, v, s: reference_rope_attention(q, k, v, segment_ids=s, rope=rope),
                        grad_of=grad_of, peers=cpu_peers(False, name, mode)))
        out.append(Case("rope_attention", name + " causal+RoPE", mode, _inputs(B, H, L, d, torch.float32),
                        lambda q, k, v, s: rope_attention(q, k, v, rope=rope, causal=True),
                        lambda q, k, v, s: reference_rope_attention(q, k, v, rope=rope, causal=True),
                        grad_of=grad_of, peers=cpu_peers(True, name + " causal", mode)))
    return out


def cases(device: str) -> List[Case]:
    return _gpu_cases() if device.startswith("cuda") else _cpu_cases()
