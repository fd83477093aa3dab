"""Transformer blocks with the three residual/normalisation arrangements the posts compare, and a
stack of them over hidden states (MODELS.md E2-E4).

- "pre":  x ← x + F(LN(x))            (GPT-2, most modern models; the stack ends with a LayerNorm)
- "post": x ← LN(x + F(x))            (the original Transformer, BERT)
- "deepnorm": x ← LN(α·x + F(x))      (DeepNet, Wang et al. 2022; post 为什么需要残差？一个来自
  DeepNet的视角): post-LN with the identity path up-weighted by α and the residual branches'
  initialisation (FFN, value and output projections) scaled down by β; for an N-layer encoder (or
  decoder-only model) α = (2N)^(1/4), β = (8N)^(−1/4).
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from kexue.nn.attention import MultiHeadAttention

Tensor = torch.Tensor

NORMS = ("pre", "post", "deepnorm")


def deepnorm_coefficients(depth: int) -> Tuple[float, float]:
    """DeepNet's (α, β) for an N-layer encoder-only / decoder-only stack: ((2N)^(1/4), (8N)^(−1/4))."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"deepnorm_coefficients: depth must be a positive int, got {depth!r}")
    return (2 * depth) ** 0.25, (8 * depth) ** -0.25


class FeedForward(nn.Module):
    """dim → mult·dim → GELU → dim."""

    def __init__(self, dim: int, mult: int = 4, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.up = nn.Linear(dim, mult * dim, bias=bias)
        self.act = nn.GELU()
        self.down = nn.Linear(mult * dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self, gain: float = 1.0) -> None:
        for layer in (self.up, self.down):
            nn.init.xavier_normal_(layer.weight, gain=gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [..., dim] → [..., dim]."""
        return self.dropout(self.down(self.act(self.up(x))))


class TransformerBlock(nn.Module):
    """Self-attention + feed-forward with residual arrangement ``norm`` (see the module
    docstring). ``depth`` (the number of blocks in the stack) is required for "deepnorm".
    Weights are Xavier-normal; with "deepnorm" the FFN and the value/output projections take
    gain β. ``bias`` applies to every linear layer."""

    def __init__(self, dim: int, heads: int, kv_heads: Optional[int] = None, ffn_mult: int = 4, norm: str = "pre",
                 depth: Optional[int] = None, rope=None, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"TransformerBlock: norm must be one of {NORMS}, got {norm!r}")
        if not isinstance(ffn_mult, int) or isinstance(ffn_mult, bool) or ffn_mult < 1:
            raise ValueError(f"TransformerBlock: ffn_mult must be a positive int, got {ffn_mult!r}")
        if norm == "deepnorm":
            if depth is None:
                raise ValueError("TransformerBlock: norm='deepnorm' needs depth (the number of layers N)")
            self.alpha, self.beta = deepnorm_coefficients(depth)
        else:
            self.alpha, self.beta = 1.0, 1.0
        self.norm, self.depth = norm, depth
        self.attn = MultiHeadAttention(dim, heads, kv_heads, rope=rope, bias=bias, dropout=dropout)
        self.ffn = FeedForward(dim, ffn_mult, bias=bias, dropout=dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn.reset_parameters(value_gain=self.beta)
        self.ffn.reset_parameters(gain=self.beta)

    def forward(self, x: Tensor, *, positions: Optional[Tensor] = None, causal: bool = False,
                segment_ids: Optional[Tensor] = None, mask_rule: str = "unilm", key_lengths: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None) -> Tensor:
        """x [B, L, dim] → [B, L, dim]; the keyword arguments are those of ``rope_attention``."""
        def attend(h: Tensor) -> Tensor:
            return self.attn(h, positions=positions, causal=causal, segment_ids=segment_ids, mask_rule=mask_rule,
                             key_lengths=key_lengths, attn_mask=attn_mask)

        if self.norm == "pre":
            x = x + attend(self.norm1(x))
            return x + self.ffn(self.norm2(x))
        x = self.norm1(self.alpha * x + attend(x))
        return self.norm2(self.alpha * x + self.ffn(x))

    def extra_repr(self) -> str:
        extra = f", alpha={self.alpha:.4g}, beta={self.beta:.4g}" if self.norm == "deepnorm" else ""
        return f"norm={self.norm!r}{extra}"


class TransformerStack(nn.Module):
    """``layers`` TransformerBlocks over hidden states [B, L, dim], sharing one ``rope``, plus a
    final LayerNorm for "pre" (the post-LN variants end normalised already). DeepNorm's α and β
    are set from N = ``layers``.

    ``forward(..., return_all=True)`` also returns the hidden states [input, after block 1, …,
    after block N] (before the final LayerNorm), for models that read intermediate layers
    (UniVAE's multi-scale latents)."""

    def __init__(self, dim: int, heads: int, layers: int, kv_heads: Optional[int] = None, ffn_mult: int = 4,
                 norm: str = "pre", rope=None, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
            raise ValueError(f"TransformerStack: layers must be a positive int, got {layers!r}")
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, kv_heads, ffn_mult, norm, depth=layers, rope=rope, dropout=dropout, bias=bias)
            for _ in range(layers))
        self.final_norm = nn.LayerNorm(dim) if norm == "pre" else nn.Identity()
        self.norm = norm

    def forward(self, x: Tensor, *, positions: Optional[Tensor] = None, causal: bool = False,
                segment_ids: Optional[Tensor] = None, mask_rule: str = "unilm", key_lengths: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None,
                return_all: bool = False) -> Union[Tensor, Tuple[Tensor, List[Tensor]]]:
        """``x`` [B, L, dim] → [B, L, dim] after every block and the final norm; with ``return_all``
        also the list of hidden states (input, then each block's output, before the final norm).
        The keyword arguments are those of ``TransformerBlock.forward``."""
        hidden = [x]
        for block in self.blocks:
            x = block(x, positions=positions, causal=causal, segment_ids=segment_ids, mask_rule=mask_rule,
                      key_lengths=key_lengths, attn_mask=attn_mask)
            hidden.append(x)
        out = self.final_norm(x)
        return (out, hidden) if return_all else out
