"""Attention with rotary positions and custom masks (MODELS.md E1-E2).

``rope_attention(q, k, v, ...)``: softmax(scale·R(q)·R(k)ᵀ + mask)·v per head, where R rotates by
a ``kexue.nn.RoPE`` (``apply_rope``) and the mask is the AND of every mask given:

- ``causal``: key j visible from query i iff j ≤ i + (Lk − Lq);
- ``segment_ids`` [B, Lk] of 0 (source) / 1 (target), non-decreasing along each row, read by
  ``mask_rule``:
  "unilm" (post 从语言模型到Seq2Seq：Transformer如戏，全靠Mask; Dong et al. 2019): the source sees
  the whole source, a target token sees the source and the targets up to itself; with
  c = cumsum(segment_ids), key k is visible from query q iff c[k] ≤ c[q];
  "uniae" (post UniVAE): the source sees the whole source, a target token sees only the first
  position (index 0, the [CLS] bottleneck) and the targets up to itself;
- ``key_lengths`` [B]: keys j ≥ key_lengths[b] are padding, hidden;
- ``attn_mask`` boolean [B or 1, H or 1, Lq, Lk], True = visible.

Queries and keys: q [B, H, Lq, d], k and v [B, Hkv, Lk, d] with H % Hkv == 0 (grouped-query
attention: query head h reads kv head h // (H/Hkv)). When Lq ≠ Lk the queries are the LAST Lq
positions of the key sequence (a decoding step over a cache): query i sits at key index
i + (Lk − Lq); it takes its position (``positions[..., Lk − Lq + i]``, default arange) and its
segment id from there. RoPE's length-dependent scalings ("dynamic", "longrope") are evaluated at
the current length: max(positions) + 1 when ``positions`` are given (as the transformers library
reads it from ``position_ids``: a decoding step at position 5000 is at length 5001), else Lk.

A query with nothing visible returns 0 (not NaN) and passes no gradient. The output has q's dtype;
half-precision inputs are computed in float32 and float64 inputs in float64.

``_check_attention_args`` / ``_check_rope_args`` hold every argument check; ``_rope_attention_impl``
and ``_apply_rope_impl`` call the fused kernels (tiled with an online softmax, RoPE applied to q and
k inside, masks evaluated per tile and fully hidden tiles skipped; no L×L tensor); the
``reference_*`` functions are the plain-torch oracle. Value checks on ``segment_ids`` (0/1, non-decreasing) run only on CPU tensors outside
``torch.compile``: on a GPU they would cost a device-to-host synchronisation per call.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from kexue import _C
from kexue.ops import _checks as C
from kexue.ops._autocast import promote_under_autocast
from kexue.ops._common import acc_dtype, can_check_values

Tensor = torch.Tensor

MASK_RULES = ("unilm", "uniae")


# ---------------------------------------------------------------------------------------------
# Public functions

def rope_attention(q: Tensor, k: Tensor, v: Tensor, *, rope=None, positions: Optional[Tensor] = None,
                   causal: bool = False, segment_ids: Optional[Tensor] = None, mask_rule: str = "unilm",
                   key_lengths: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None,
                   scale: Optional[float] = None) -> Tensor:
    """Masked multi-head attention with rotary positions; see the module docstring. ``rope``: a
    ``kexue.nn.RoPE`` of dim d or None (no rotation; ``positions`` then has no effect). ``scale``
    defaults to 1/√d. Returns [B, H, Lq, d] in q's dtype."""
    _check_attention_args(q, k, v, rope, positions, causal, segment_ids, mask_rule, key_lengths, attn_mask, scale)
    return _rope_attention_impl(q, k, v, rope, positions, causal, segment_ids, mask_rule, key_lengths, attn_mask,
                                scale)


def apply_rope(x: Tensor, positions: Optional[Tensor], rope, *, seq_len: Optional[int] = None) -> Tensor:
    """Rotate x [..., L, d] by ``rope`` at ``positions`` ([L] or [B, L] with B = x.shape[0];
    default arange(L)). ``seq_len`` (the current length, for the "dynamic" and "longrope"
    scalings) defaults to max(positions) + 1 when ``positions`` are given, else to L."""
    _check_rope_args(x, positions, rope, seq_len)
    return _apply_rope_impl(x, positions, rope, seq_len)


def attention_mask(batch: int, heads: int, q_len: int, k_len: int, *, causal: bool = False,
                   segment_ids: Optional[Tensor] = None, mask_rule: str = "unilm",
                   key_lengths: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None,
                   device=None) -> Tensor:
    """The dense boolean mask [batch, heads, q_len, k_len] (True = visible) that ``rope_attention``
    applies for these arguments. ``device`` defaults to that of the mask tensors given, else CPU."""
    who = "kexue.attention_mask"
    for name, value in (("batch", batch), ("heads", heads), ("q_len", q_len), ("k_len", k_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{who}: {name} must be a non-negative int, got {value!r}")
    given = [t for t in (segment_ids, key_lengths, attn_mask) if isinstance(t, Tensor)]
    if device is None:
        device = given[0].device if given else torch.device("cpu")
    device = torch.device(device)
    _check_mask_args(who, batch, heads, q_len, k_len, causal, segment_ids, mask_rule, key_lengths, attn_mask,
                     device)
    return _dense_mask(batch, heads, q_len, k_len, causal, segment_ids, mask_rule, key_lengths, attn_mask,
                       device).expand(batch, heads, q_len, k_len).contiguous()


def reference_rope_attention(q: Tensor, k: Tensor, v: Tensor, *, rope=None, positions: Optional[Tensor] = None,
                             causal: bool = False, segment_ids: Optional[Tensor] = None, mask_rule: str = "unilm",
                             key_lengths: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None,
                             scale: Optional[float] = None) -> Tensor:
    """``rope_attention`` in plain torch: explicit rotation, repeated kv heads, the dense mask, a
    softmax in float32 (float64 for float64 inputs). The oracle of the tests."""
    _check_attention_args(q, k, v, rope, positions, causal, segment_ids, mask_rule, key_lengths, attn_mask, scale)
    return _reference_attention(q, k, v, rope, positions, causal, segment_ids, mask_rule, key_lengths, attn_mask,
                                scale)


def reference_apply_rope(x: Tensor, positions: Optional[Tensor], rope, *, seq_len: Optional[int] = None) -> Tensor:
    """``apply_rope`` in plain torch."""
    _check_rope_args(x, positions, rope, seq_len)
    return _reference_rotation(x, positions, rope, seq_len)


# ---------------------------------------------------------------------------------------------
# Dispatch: the fused kernels (csrc/kexue/attention.h; C++ autograd in csrc/ops/attention.cpp).

def _length_of_positions(positions: Tensor) -> Tensor:
    """The current length the positions imply: floor(max(positions)) + 1 (at least 0), as the
    transformers library's dynamic / longrope RoPE reads it from ``position_ids``; one length for
    the whole batch. A 0-dim float64 tensor on the positions' device: the reduction stays on the
    device (no host synchronisation) and in the graph under torch.compile(fullgraph=True), and the
    RoPE frequencies are computed from it with tensor operations. positions must not be empty."""
    return (torch.floor(positions.detach().max().to(torch.float64)) + 1).clamp_min(0)


def _rope_length(rope, positions: Optional[Tensor], default: int):
    """``seq_len`` for rope: the positions' length (``_length_of_positions``) when positions are
    given and rope's frequencies depend on the length, else ``default`` (the tensor's L). Ropes
    whose frequencies ignore the length (no scaling, "linear", "ntk", "yarn", "llama3") skip the
    reduction."""
    if not getattr(rope, "depends_on_length", False) or positions is None or positions.numel() == 0:
        return default
    return _length_of_positions(positions)


def _kernel_rope(rope, seq_len, device):
    if rope is None:
        return None, 1.0, False
    inv_freq, scaling, interleaved = rope.kernel_args(seq_len, device)
    return inv_freq, float(scaling), bool(interleaved)


def _rope_attention_impl(q, k, v, rope, positions, causal, segment_ids, mask_rule, key_lengths, attn_mask, scale):
    inv_freq, rope_scale, interleaved = _kernel_rope(rope, _rope_length(rope, positions, k.shape[-2]), q.device)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, _ = torch.ops.kexue.rope_attention(q, k, v, inv_freq, rope_scale, interleaved,
                                            positions if rope is not None else None, bool(causal), segment_ids,
                                            mask_rule, key_lengths, attn_mask, scale)
    return out


def _apply_rope_impl(x, positions, rope, seq_len):
    if seq_len is None:
        seq_len = _rope_length(rope, positions, x.shape[-2])
    inv_freq, rope_scale, interleaved = _kernel_rope(rope, seq_len, x.device)
    return torch.ops.kexue.apply_rope(x, positions, inv_freq, rope_scale, interleaved, False)


# ---- fake kernels: csrc/ops/attention.cpp's checks, in its order ----------------------------------


def _check_rope_kernel_args(inv_freq, rope_scale, positions, x, B, L, d, op):
    if inv_freq is None:
        return
    C.check(C.finite(rope_scale) and rope_scale > 0, op, "rope_scale must be positive and finite, got ",
            C.num(rope_scale))
    C.check(d % 2 == 0, op, "RoPE needs an even head dimension, got ", d)
    C.check(inv_freq.dim() == 1 and inv_freq.shape[0] == d // 2, op, "inv_freq must have shape [", d // 2,
            "] (half the head dimension), got ", C.sizes(inv_freq))
    C.check(inv_freq.device == x.device, op, "inv_freq must be on ", x.device)
    if positions is None:
        return
    p = positions
    C.check(p.device == x.device, op, "positions must be on ", x.device, ", got ", p.device)
    C.check(p.dtype != torch.bool and not p.dtype.is_complex, op, "positions must be integer or real, got ",
            C.dtype_name(p.dtype))
    C.check(not p.requires_grad, op, "positions are not differentiable; pass them without requires_grad")
    C.check((p.dim() == 1 and p.shape[0] == L) or (p.dim() == 2 and (p.shape[0] == B or p.shape[0] == 1)
                                                   and p.shape[1] == L),
            op, "positions must be [", L, "] or [", B, ", ", L, "], got ", C.sizes(p))


def _check_kernel_args(q, k, v, inv_freq, rope_scale, positions, segment_ids, mask_rule, key_lengths, attn_mask,
                       scale, op):
    C.device_supported(q, op)
    C.float_dtype(q, op, "q")
    C.check(q.dim() == 4, op, "q must be [batch, heads, len, head_dim], got shape ", C.sizes(q))
    C.like(q, "q", k, op, "k")
    C.like(q, "q", v, op, "v")
    C.check(k.dim() == 4 and k.shape == v.shape, op, "k and v must both be [batch, kv_heads, len, head_dim], got ",
            C.sizes(k), " and ", C.sizes(v))
    B, H, Lq, d = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    C.check(k.shape[0] == B and k.shape[3] == d, op, "k must be [", B, ", kv_heads, len, ", d, "], got ", C.sizes(k))
    C.check(d >= 1, op, "the head dimension must be at least 1, got 0")
    C.check(Hkv >= 1 and H % Hkv == 0, op, "the query heads (", H, ") must be a multiple of the kv heads (", Hkv, ")")
    C.check(Lq <= Lk or (inv_freq is None and segment_ids is None), op,
            "with RoPE or segment ids, q may not be longer than k, got ", Lq, " > ", Lk)
    C.check(C.finite(scale) and scale > 0, op, "scale must be positive and finite, got ", C.num(scale))
    _check_rope_kernel_args(inv_freq, rope_scale, positions, q, B, Lk, d, op)
    if segment_ids is not None:
        C.check(segment_ids.device == q.device, op, "segment_ids must be on ", q.device)
        C.check(segment_ids.dim() == 2 and segment_ids.shape[0] == B and segment_ids.shape[1] == Lk, op,
                "segment_ids must be [", B, ", ", Lk, "], got ", C.sizes(segment_ids))
        C.check(mask_rule in MASK_RULES, op, 'mask_rule must be "unilm" or "uniae", got "', mask_rule, '"')
    if key_lengths is not None:
        C.check(key_lengths.device == q.device, op, "key_lengths must be on ", q.device)
        C.check(key_lengths.dim() == 1 and key_lengths.shape[0] == B, op, "key_lengths must be [", B, "], got ",
                C.sizes(key_lengths))
        C.check(not key_lengths.dtype.is_floating_point and key_lengths.dtype != torch.bool
                and not key_lengths.dtype.is_complex, op, "key_lengths must be integers, got ",
                C.dtype_name(key_lengths.dtype))
    if attn_mask is not None:
        C.check(attn_mask.dtype == torch.bool, op, "attn_mask must be boolean (True = visible), got ",
                C.dtype_name(attn_mask.dtype))
        C.check(attn_mask.device == q.device, op, "attn_mask must be on ", q.device)
        m = attn_mask.reshape(1, 1, *attn_mask.shape) if attn_mask.dim() == 2 else attn_mask
        C.check(m.dim() == 4 and (m.shape[0] == 1 or m.shape[0] == B) and (m.shape[1] == 1 or m.shape[1] == H)
                and m.shape[2] == Lq and m.shape[3] == Lk, op, "attn_mask must be [Lq, Lk] or [B or 1, H or 1, Lq, Lk] = [",
                B, ", ", H, ", ", Lq, ", ", Lk, "], got ", C.sizes(attn_mask))


@torch.library.register_fake("kexue::rope_attention")
def _rope_attention_fake(q, k, v, inv_freq, rope_scale, interleaved, positions, causal, segment_ids, mask_rule,
                         key_lengths, attn_mask, scale):
    op = "kexue.rope_attention"
    _check_kernel_args(q, k, v, inv_freq, rope_scale, positions, segment_ids, mask_rule, key_lengths, attn_mask,
                       scale, op)
    if q.numel() > 0 and C.on_cuda_kernels(q):
        C.check(q.shape[3] <= 256, op, "the CUDA kernels take head dimensions up to 256, got ", q.shape[3])
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=acc_dtype(q.dtype))


@torch.library.register_fake("kexue::rope_attention_backward")
def _rope_attention_backward_fake(grad_out, q, k, v, out, lse, inv_freq, rope_scale, interleaved, positions, causal,
                                  segment_ids, mask_rule, key_lengths, attn_mask, scale):
    op = "kexue.rope_attention_backward"
    _check_kernel_args(q, k, v, inv_freq, rope_scale, positions, segment_ids, mask_rule, key_lengths, attn_mask,
                       scale, op)
    C.like(q, "q", grad_out, op, "grad_out")
    C.like(q, "q", out, op, "out")
    C.check(grad_out.shape == q.shape and out.shape == q.shape, op, "grad_out and out must have the shape of q ",
            C.sizes(q))
    C.check(lse.dim() == 3 and lse.shape == q.shape[:3] and lse.dtype == acc_dtype(q.dtype), op,
            "lse must be the forward's [B, H, Lq] log-sum-exp")
    C.check(lse.device == q.device, op, "lse must be on ", q.device, " like q, got ", lse.device)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@torch.library.register_fake("kexue::apply_rope")
def _apply_rope_fake(x, positions, inv_freq, rope_scale, interleaved, inverse):
    op = "kexue.apply_rope"
    C.device_supported(x, op)
    C.float_dtype(x, op, "x")
    C.check(x.dim() >= 2, op, "x must be [..., len, head_dim], got ", C.sizes(x))
    _check_rope_kernel_args(inv_freq, rope_scale, positions, x, x.shape[0] if x.dim() >= 3 else 1, x.shape[-2],
                            x.shape[-1], op)
    return x.new_empty(x.shape)


# ---------------------------------------------------------------------------------------------
# Argument checks

def _is_integer(t: Tensor) -> bool:
    return not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool


def _check_same_device(who: str, name: str, t: Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{who}: {name} is on {t.device} but the inputs are on {device}")


def _check_rope_object(who: str, rope, d: int) -> None:
    if not all(hasattr(rope, a) for a in ("cos_sin", "kernel_args", "dim", "interleaved")):
        raise TypeError(f"{who}: rope must be a kexue.nn.RoPE or None, got {type(rope).__name__}")
    if d % 2:
        raise ValueError(f"{who}: rope rotates pairs, so the head dim must be even, got d={d}")
    if rope.dim != d:
        raise ValueError(f"{who}: rope.dim ({rope.dim}) must equal the head dim d ({d}); partial rotation is "
                         f"not supported")


def _check_positions(who: str, positions, batch: int, length: int, device: torch.device) -> None:
    if positions is None:
        return
    if not isinstance(positions, Tensor):
        raise TypeError(f"{who}: positions must be a tensor or None, got {type(positions).__name__}")
    if positions.dtype == torch.bool or positions.is_complex():
        raise TypeError(f"{who}: positions must be integer or real, got {positions.dtype}")
    if positions.requires_grad:
        raise ValueError(f"{who}: positions are not differentiable; pass them without requires_grad")
    ok = (positions.dim() == 1 and positions.shape[0] == length) or \
         (positions.dim() == 2 and positions.shape[0] in (1, batch) and positions.shape[1] == length)
    if not ok:
        raise ValueError(f"{who}: positions must have shape [{length}] or [{batch}, {length}], "
                         f"got {list(positions.shape)}")
    _check_same_device(who, "positions", positions, device)


def _check_mask_args(who, batch, heads, q_len, k_len, causal, segment_ids, mask_rule, key_lengths, attn_mask,
                     device) -> None:
    if not isinstance(causal, bool):
        raise TypeError(f"{who}: causal must be a bool, got {type(causal).__name__}")
    if mask_rule not in MASK_RULES:
        raise ValueError(f"{who}: mask_rule must be one of {MASK_RULES}, got {mask_rule!r}")
    if segment_ids is not None:
        if not isinstance(segment_ids, Tensor):
            raise TypeError(f"{who}: segment_ids must be a tensor or None, got {type(segment_ids).__name__}")
        if not (_is_integer(segment_ids) or segment_ids.dtype == torch.bool):
            raise TypeError(f"{who}: segment_ids must be an integer or bool tensor of 0/1, got {segment_ids.dtype}")
        if tuple(segment_ids.shape) != (batch, k_len):
            raise ValueError(f"{who}: segment_ids must have shape [B, Lk] = [{batch}, {k_len}], "
                             f"got {list(segment_ids.shape)}")
        if q_len > k_len:
            raise ValueError(f"{who}: segment_ids need Lq <= Lk (queries are the last Lq key positions), "
                             f"got Lq={q_len}, Lk={k_len}")
        _check_same_device(who, "segment_ids", segment_ids, device)
        if can_check_values(segment_ids) and segment_ids.numel():
            seg = segment_ids.long()
            if not bool(((seg == 0) | (seg == 1)).all()):
                raise ValueError(f"{who}: segment_ids must hold only 0 (source) and 1 (target)")
            if not bool((seg[:, 1:] >= seg[:, :-1]).all()):
                raise ValueError(f"{who}: segment_ids must be non-decreasing along each row (source, then target)")
    if key_lengths is not None:
        if not isinstance(key_lengths, Tensor):
            raise TypeError(f"{who}: key_lengths must be an integer tensor [B] or None, "
                            f"got {type(key_lengths).__name__}")
        if not _is_integer(key_lengths):
            raise TypeError(f"{who}: key_lengths must be an integer tensor, got {key_lengths.dtype}")
        if tuple(key_lengths.shape) != (batch,):
            raise ValueError(f"{who}: key_lengths must have shape [B] = [{batch}], got {list(key_lengths.shape)}")
        _check_same_device(who, "key_lengths", key_lengths, device)
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"{who}: attn_mask must be a boolean tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool:
            raise TypeError(f"{who}: attn_mask must be boolean (True = visible), got {attn_mask.dtype}")
        s = tuple(attn_mask.shape)
        if len(s) != 4 or s[0] not in (1, batch) or s[1] not in (1, heads) or s[2:] != (q_len, k_len):
            raise ValueError(f"{who}: attn_mask must have shape [B or 1, H or 1, Lq, Lk] = "
                             f"[{batch} or 1, {heads} or 1, {q_len}, {k_len}], got {list(s)}")
        _check_same_device(who, "attn_mask", attn_mask, device)


def _check_attention_args(q, k, v, rope, positions, causal, segment_ids, mask_rule, key_lengths, attn_mask,
                          scale) -> None:
    who = "kexue.rope_attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{who}: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{who}: {name} must be 4-D ({'[B, H, Lq, d]' if name == 'q' else '[B, Hkv, Lk, d]'}), "
                             f"got shape {list(t.shape)}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{who}: {name} must be a floating-point tensor, got {t.dtype}")
    # Under autocast the op promotes mixed dtypes (kexue/ops/_autocast.py), as torch's ops do.
    if not (q.dtype == k.dtype == v.dtype) and not torch.is_autocast_enabled(q.device.type):
        raise TypeError(f"{who}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{who}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"{who}: k and v must have the same shape [B, Hkv, Lk, d], got {list(k.shape)} and "
                         f"{list(v.shape)}")
    B, H, Lq, d = q.shape
    _, Hkv, Lk, dk = k.shape
    if k.shape[0] != B:
        raise ValueError(f"{who}: q and k/v must have the same batch size, got {B} and {k.shape[0]}")
    if dk != d:
        raise ValueError(f"{who}: q and k/v must have the same head dim, got {d} and {dk}")
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"{who}: the query heads ({H}) must be a multiple of the kv heads ({Hkv})")
    if d == 0:
        raise ValueError(f"{who}: the head dimension must be at least 1, got 0")
    if rope is not None:
        _check_rope_object(who, rope, d)
        if Lq > Lk:
            raise ValueError(f"{who}: with rope, Lq ({Lq}) must not exceed Lk ({Lk}): queries take the last Lq "
                             f"key positions")
    _check_positions(who, positions, B, Lk, q.device)
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)
                              or not math.isfinite(scale) or not scale > 0):
        raise ValueError(f"{who}: scale must be a positive finite number or None (1/sqrt(d)), got {scale!r}")
    _check_mask_args(who, B, H, Lq, Lk, causal, segment_ids, mask_rule, key_lengths, attn_mask, q.device)


def _check_rope_args(x, positions, rope, seq_len) -> None:
    who = "kexue.apply_rope"
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: x must be a tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{who}: x must be [..., L, d], got shape {list(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{who}: x must be a floating-point tensor, got {x.dtype}")
    if rope is None:
        raise TypeError(f"{who}: rope must be a kexue.nn.RoPE, got None")
    _check_rope_object(who, rope, x.shape[-1])
    if positions is not None and positions.dim() == 2 and x.dim() < 3:
        raise ValueError(f"{who}: positions [B, L] need x of shape [B, ..., L, d], got {list(x.shape)}")
    _check_positions(who, positions, x.shape[0] if x.dim() >= 3 else 1, x.shape[-2], x.device)
    if seq_len is not None and (not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 0):
        raise ValueError(f"{who}: seq_len must be a non-negative int or None, got {seq_len!r}")


# ---------------------------------------------------------------------------------------------
# References

def _rotate(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    """(x1, x2) → (x1·cos − x2·sin, x1·sin + x2·cos) over the pairs of the layout."""
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def _reference_rotation(x: Tensor, positions: Optional[Tensor], rope, seq_len) -> Tensor:
    acc = acc_dtype(x.dtype)
    length = x.shape[-2]
    if seq_len is None:
        seq_len = _rope_length(rope, positions, length)
    if positions is None:
        positions = torch.arange(length, device=x.device)
    cos, sin = rope.cos_sin(positions, seq_len=seq_len, dtype=acc)
    if positions.dim() == 2:  # [B, L, d/2] → [B, 1, …, 1, L, d/2] against x [B, …, L, d]
        cos, sin = (t.reshape(t.shape[0], *([1] * (x.dim() - 3)), *t.shape[1:]) for t in (cos, sin))
    return _rotate(x.to(acc), cos, sin, rope.interleaved).to(x.dtype)


def _dense_mask(batch, heads, q_len, k_len, causal, segment_ids, mask_rule, key_lengths, attn_mask,
                device) -> Tensor:
    """[batch or 1, heads or 1, q_len, k_len] boolean, True = visible (see the module docstring)."""
    offset = k_len - q_len
    qi = torch.arange(q_len, device=device).view(q_len, 1) + offset  # each query's index among the keys
    kj = torch.arange(k_len, device=device).view(1, k_len)
    mask = torch.ones(1, 1, q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        mask = mask & (kj <= qi)
    if segment_ids is not None:
        seg = segment_ids.long()
        if mask_rule == "unilm":
            c = seg.cumsum(-1)
            mask = mask & (c[:, None, None, :] <= c[:, None, offset:, None])
        else:  # "uniae"
            seg_k, seg_q = seg[:, None, None, :], seg[:, None, offset:, None]
            source_row = seg_k == 0
            target_row = (kj == 0) | ((seg_k == 1) & (kj <= qi))
            mask = mask & torch.where(seg_q == 0, source_row, target_row)
    if key_lengths is not None:
        mask = mask & (kj < key_lengths.view(-1, 1, 1, 1))
    if attn_mask is not None:
        mask = mask & attn_mask
    return mask


def _reference_attention(q, k, v, rope, positions, causal, segment_ids, mask_rule, key_lengths, attn_mask,
                         scale) -> Tensor:
    B, H, Lq, d = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    acc = acc_dtype(q.dtype)
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    if rope is not None:
        length = _rope_length(rope, positions, Lk)  # of all Lk positions, the queries' included
        pos = torch.arange(Lk, device=q.device) if positions is None else positions
        qa = _reference_rotation(qa, pos[..., Lk - Lq:], rope, length)
        ka = _reference_rotation(ka, pos, rope, length)
    if H != Hkv:
        ka, va = ka.repeat_interleave(H // Hkv, dim=1), va.repeat_interleave(H // Hkv, dim=1)
    logits = (qa @ ka.transpose(-1, -2)) * (1.0 / math.sqrt(d) if scale is None else scale)
    mask = _dense_mask(B, H, Lq, Lk, causal, segment_ids, mask_rule, key_lengths, attn_mask, q.device)
    visible = mask.any(-1, keepdim=True)
    # Rows with no visible key: finite logits before the softmax, probabilities zeroed after, so
    # the row yields 0 and no gradient instead of NaN.
    logits = torch.where(visible, logits.masked_fill(~mask, float("-inf")), torch.zeros_like(logits))
    probs = torch.softmax(logits, dim=-1) * visible
    return (probs @ va).to(q.dtype)


promote_under_autocast("rope_attention", (0, 1, 2))
