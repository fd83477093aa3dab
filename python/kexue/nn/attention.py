"""Multi-head attention over ``kexue.ops.rope_attention``: q/k/v/o projections, grouped-query
attention (Ainslie et al. 2023: ``kv_heads`` < ``heads`` key/value heads shared by groups of query
heads), rotary positions, and the custom masks of MODELS.md E2."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from kexue.ops import rope_attention

Tensor = torch.Tensor


class MultiHeadAttention(nn.Module):
    """Self-attention (or cross-attention on ``kv``) with ``heads`` query heads of size
    dim/heads and ``kv_heads`` (default ``heads``) key/value heads.

    ``rope``: a ``kexue.nn.RoPE`` whose dim is the head size, or None. ``dropout`` applies to the
    layer's output: the fused attention op has no dropout on the attention probabilities.
    """

    def __init__(self, dim: int, heads: int, kv_heads: Optional[int] = None, rope=None, bias: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        for name, value in (("dim", dim), ("heads", heads), ("kv_heads", kv_heads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MultiHeadAttention: {name} must be a positive int, got {value!r}")
        if dim % heads:
            raise ValueError(f"MultiHeadAttention: dim ({dim}) must be divisible by heads ({heads})")
        if heads % kv_heads:
            raise ValueError(f"MultiHeadAttention: heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MultiHeadAttention: dropout must be in [0, 1), got {dropout!r}")
        self.dim, self.heads, self.kv_heads, self.head_dim = dim, heads, kv_heads, dim // heads
        if rope is not None and getattr(rope, "dim", None) != self.head_dim:
            raise ValueError(f"MultiHeadAttention: rope must rotate the head dim {self.head_dim} (dim/heads), "
                             f"got rope.dim={getattr(rope, 'dim', None)}")
        self.rope = rope
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self, value_gain: float = 1.0) -> None:
        """Xavier-normal weights (gain 1 for q/k, ``value_gain`` for v/o: DeepNet's β), zero biases."""
        gains = ((self.q_proj, 1.0), (self.k_proj, 1.0), (self.v_proj, value_gain), (self.o_proj, value_gain))
        for proj, gain in gains:
            nn.init.xavier_normal_(proj.weight, gain=gain)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    def _split(self, x: Tensor, heads: int) -> Tensor:
        b, length, _ = x.shape
        return x.view(b, length, heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, *, positions: Optional[Tensor] = None, causal: bool = False,
                segment_ids: Optional[Tensor] = None, mask_rule: str = "unilm", key_lengths: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None, kv: Optional[Tensor] = None) -> Tensor:
        """x [B, Lq, dim] → [B, Lq, dim]; ``kv`` [B, Lk, dim] is the memory of cross-attention
        (default: x itself). The mask arguments and ``positions`` are those of
        ``kexue.ops.rope_attention`` (sized by the keys)."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"MultiHeadAttention: x must have shape [B, L, {self.dim}], got {got}")
        memory = x if kv is None else kv
        if not isinstance(memory, Tensor) or memory.dim() != 3 or memory.shape[-1] != self.dim \
                or memory.shape[0] != x.shape[0]:
            got = list(memory.shape) if isinstance(memory, Tensor) else type(memory).__name__
            raise ValueError(f"MultiHeadAttention: kv must have shape [{x.shape[0]}, Lk, {self.dim}], got {got}")
        q = self._split(self.q_proj(x), self.heads)
        k = self._split(self.k_proj(memory), self.kv_heads)
        v = self._split(self.v_proj(memory), self.kv_heads)
        out = rope_attention(q, k, v, rope=self.rope, positions=positions, causal=causal, segment_ids=segment_ids,
                             mask_rule=mask_rule, key_lengths=key_lengths, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.dim)
        return self.dropout(self.o_proj(out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, kv_heads={self.kv_heads}"
