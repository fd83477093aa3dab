"""rope_attention and its reference against a naive float64 loop written from the mask rules'
definitions; the dense mask builder; fully masked rows; GQA; Lq ≠ Lk; dtypes; bad input."""
import math

import numpy as np
import pytest
import torch

from kexue.nn import RoPE
from kexue.ops import attention_mask, reference_rope_attention, rope_attention

B, H, D = 2, 4, 8


# --- the naive oracle --------------------------------------------------------------------------

def naive_visible(b, h, i, j, *, q_len, k_len, causal=False, segment_ids=None, mask_rule="unilm", key_lengths=None,
                  attn_mask=None):
    """Whether key j is visible from query i, straight from the definitions in words."""
    qi = i + k_len - q_len  # the query's index in the key sequence
    if causal and j > qi:
        return False
    if segment_ids is not None:
        s = segment_ids[b]
        if s[qi] == 0:  # a source token sees the whole source, nothing else
            ok = s[j] == 0
        elif mask_rule == "unilm":  # a target token sees the source and the targets up to itself
            ok = s[j] == 0 or j <= qi
        else:  # uniae: a target token sees position 0 and the targets up to itself
            ok = j == 0 or (s[j] == 1 and j <= qi)
        if not ok:
            return False
    if key_lengths is not None and j >= key_lengths[b]:
        return False
    if attn_mask is not None:
        return bool(attn_mask[b % attn_mask.shape[0], h % attn_mask.shape[1], i, j])
    return True


def naive_rotate(x, pos, rope):
    """x [L, d] rotated as complex pairs times exp(i·pos·θ)·attention_scaling."""
    if rope is None:
        return x
    d = x.shape[-1]
    theta = rope.inv_freq(None).double().numpy()
    if rope.layout == "interleaved":
        z = x[:, 0::2] + 1j * x[:, 1::2]
    else:
        z = x[:, : d // 2] + 1j * x[:, d // 2:]
    z = z * np.exp(1j * np.asarray(pos, dtype=np.float64)[:, None] * theta) * rope.attention_scaling()
    out = np.empty_like(x)
    if rope.layout == "interleaved":
        out[:, 0::2], out[:, 1::2] = z.real, z.imag
    else:
        out[:, : d // 2], out[:, d // 2:] = z.real, z.imag
    return out


def naive_attention(q, k, v, *, rope=None, positions=None, scale=None, **mask):
    q, k, v = (t.double().numpy() for t in (q, k, v))
    nb, nh, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    seg = None if mask.get("segment_ids") is None else mask["segment_ids"].tolist()
    kl = None if mask.get("key_lengths") is None else mask["key_lengths"].tolist()
    am = mask.get("attn_mask")
    out = np.zeros_like(q)
    for b in range(nb):
        pos = np.arange(lk) if positions is None else np.asarray(positions[b % positions.shape[0]]
                                                                  if positions.dim() == 2 else positions)
        for h in range(nh):
            g = h // (nh // hkv)
            qr, kr = naive_rotate(q[b, h], pos[lk - lq:], rope), naive_rotate(k[b, g], pos, rope)
            for i in range(lq):
                vis = [j for j in range(lk) if naive_visible(
                    b, h, i, j, q_len=lq, k_len=lk, causal=mask.get("causal", False), segment_ids=seg,
                    mask_rule=mask.get("mask_rule", "unilm"), key_lengths=kl, attn_mask=am)]
                if not vis:
                    continue
                logits = np.array([scale * qr[i] @ kr[j] for j in vis])
                p = np.exp(logits - logits.max())
                out[b, h, i] = (p / p.sum()) @ v[b, g, vis]
    return torch.from_numpy(out)


def segments(splits, k_len):
    """Row b: source for j < splits[b], target after."""
    return torch.stack([(torch.arange(k_len) >= s).long() for s in splits])


def inputs(hkv, q_len, k_len, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, q_len, D, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(B, hkv, k_len, D, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(B, hkv, k_len, D, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v


def random_mask(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.7


CASES = {
    "plain": (6, 6, lambda: {}),
    "causal_rope_half": (6, 6, lambda: {"causal": True, "rope": RoPE(D)}),
    "unilm_rope_interleaved": (6, 6, lambda: {"segment_ids": segments([3, 1], 6), "mask_rule": "unilm",
                                              "rope": RoPE(D, layout="interleaved")}),
    "uniae": (6, 6, lambda: {"segment_ids": segments([3, 0], 6), "mask_rule": "uniae"}),
    "key_lengths": (6, 6, lambda: {"key_lengths": torch.tensor([4, 6])}),
    "attn_mask_per_batch": (6, 6, lambda: {"attn_mask": random_mask((B, 1, 6, 6), 1)}),
    "attn_mask_per_head_causal": (6, 6, lambda: {"attn_mask": random_mask((1, H, 6, 6), 2), "causal": True}),
    "everything": (7, 7, lambda: {
        "causal": True, "segment_ids": segments([2, 4], 7), "key_lengths": torch.tensor([7, 5]),
        "attn_mask": random_mask((B, H, 7, 7), 3), "scale": 0.3,
        "rope": RoPE(D, scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4}),
        "positions": torch.tensor([[0, 1, 2, 3, 4, 5, 6], [3, 5, 8, 9, 10, 20, 21]])}),
    "lq_lt_lk_causal_unilm": (3, 7, lambda: {"causal": True, "segment_ids": segments([3, 5], 7),
                                              "rope": RoPE(D), "positions": torch.arange(7) * 2}),
    "lq_lt_lk_uniae_padding": (4, 7, lambda: {"segment_ids": segments([2, 3], 7), "mask_rule": "uniae",
                                               "key_lengths": torch.tensor([6, 7]), "rope": RoPE(D)}),
    "lq_gt_lk_causal_no_rope": (5, 3, lambda: {"causal": True}),
}


@pytest.mark.parametrize("hkv", [4, 2, 1])
@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_equals_naive_loop(case, hkv):
    q_len, k_len, make = CASES[case]
    kwargs = make()
    q, k, v = inputs(hkv, q_len, k_len)
    want = naive_attention(q, k, v, **kwargs)
    for fn in (reference_rope_attention, rope_attention):
        got = fn(q, k, v, **kwargs)
        assert got.shape == (B, H, q_len, D) and got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_fully_masked_rows_give_zero_output_and_zero_gradient():
    q, k, v = (t.requires_grad_() for t in inputs(2, 5, 5))
    am = torch.ones(B, 1, 5, 5, dtype=torch.bool)
    am[1, 0, 2] = False  # one query row of batch 1 sees nothing
    kwargs = {"key_lengths": torch.tensor([0, 5]), "attn_mask": am, "rope": RoPE(D), "causal": True}
    out = rope_attention(q, k, v, **kwargs)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all() and (out[1, :, 2] == 0).all() and (out[1, :, 3] != 0).any()
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[0] == 0).all() and (k.grad[0] == 0).all() and (v.grad[0] == 0).all()
    assert (q.grad[1, :, 2] == 0).all() and (q.grad[1, :, 3] != 0).any()
    torch.testing.assert_close(out.detach(), naive_attention(q.detach(), k.detach(), v.detach(), **kwargs),
                               rtol=1e-10, atol=1e-12)


def test_gradcheck_with_masks_and_empty_rows():
    q, k, v = (t[:, :, :4].clone().requires_grad_() for t in inputs(2, 4, 4))
    rope = RoPE(D, layout="interleaved")
    kwargs = {"rope": rope, "segment_ids": segments([2, 1], 4), "key_lengths": torch.tensor([4, 0]), "causal": True}
    assert torch.autograd.gradcheck(lambda a, b, c: reference_rope_attention(a, b, c, **kwargs), (q, k, v))


def test_last_queries_equal_the_last_rows_of_full_attention():
    q, k, v = inputs(2, 7, 7)
    kwargs = {"rope": RoPE(D), "causal": True, "segment_ids": segments([2, 4], 7),
              "positions": torch.tensor([[0, 1, 2, 3, 4, 5, 6], [5, 6, 7, 8, 9, 10, 11]])}
    full = rope_attention(q, k, v, **kwargs)
    for lq in (1, 3):
        torch.testing.assert_close(rope_attention(q[:, :, -lq:], k, v, **kwargs), full[:, :, -lq:])


def test_grouped_query_attention_equals_repeated_kv_heads():
    q, k, v = inputs(2, 6, 6)
    kwargs = {"rope": RoPE(D), "causal": True}
    expanded = rope_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), **kwargs)
    torch.testing.assert_close(rope_attention(q, k, v, **kwargs), expanded)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 3e-3)])
def test_low_precision_inputs(dtype, tol):
    q, k, v = inputs(2, 6, 6, dtype=dtype)
    kwargs = {"rope": RoPE(D), "segment_ids": segments([3, 2], 6)}
    out = rope_attention(q, k, v, **kwargs)
    assert out.dtype == dtype
    truth = naive_attention(q, k, v, **kwargs)
    assert (out.double() - truth).abs().max() < tol


def test_empty_sizes():
    q, k, v = inputs(2, 3, 0)
    assert (rope_attention(q, k, v, causal=True) == 0).all()
    out = rope_attention(*(t[:0] for t in inputs(2, 3, 3)), rope=RoPE(D))
    assert out.shape == (0, H, 3, D)


# --- the dense mask ----------------------------------------------------------------------------

def test_unilm_mask_is_the_cumsum_rule():
    for splits in ([0, 0], [3, 5], [6, 6], [1, 4]):
        seg = segments(splits, 6)
        m = attention_mask(B, 1, 6, 6, segment_ids=seg, mask_rule="unilm")
        c = seg.cumsum(-1)
        assert m.shape == (B, 1, 6, 6) and m.dtype == torch.bool
        assert torch.equal(m[:, 0], c[:, None, :] <= c[:, :, None])


def test_uniae_mask_matches_its_definition():
    seg = segments([3, 1], 6)
    m = attention_mask(B, 1, 6, 6, segment_ids=seg, mask_rule="uniae")
    for b in range(B):
        for i in range(6):
            for j in range(6):
                if seg[b, i] == 0:
                    want = bool(seg[b, j] == 0)
                else:
                    want = j == 0 or bool(seg[b, j] == 1 and j <= i)
                assert bool(m[b, 0, i, j]) == want, (b, i, j)
    # the first source position is the only source a target sees
    assert torch.equal(m[0, 0, 3:, :3], torch.tensor([[True, False, False]] * 3))


def test_masks_combine_with_and():
    seg, kl, am = segments([2, 3], 5), torch.tensor([3, 5]), random_mask((1, H, 4, 5), 7)
    parts = [attention_mask(B, H, 4, 5, causal=True), attention_mask(B, H, 4, 5, segment_ids=seg),
             attention_mask(B, H, 4, 5, key_lengths=kl), attention_mask(B, H, 4, 5, attn_mask=am)]
    combined = attention_mask(B, H, 4, 5, causal=True, segment_ids=seg, key_lengths=kl, attn_mask=am)
    assert combined.shape == (B, H, 4, 5)
    assert torch.equal(combined, parts[0] & parts[1] & parts[2] & parts[3])
    causal = parts[0][0, 0]
    assert torch.equal(causal, torch.arange(5)[None, :] <= torch.arange(4)[:, None] + 1)
    assert attention_mask(1, 1, 2, 2).all()


# --- bad input ---------------------------------------------------------------------------------

def _bad(**over):
    q, k, v = inputs(2, 5, 5)
    args = {"q": q, "k": k, "v": v}
    args.update({name: over.pop(name) for name in ("q", "k", "v") if name in over})
    return args, over


@pytest.mark.parametrize("over,error,match", [
    ({"q": torch.randn(B, 5, D)}, ValueError, r"q must be 4-D"),
    ({"q": torch.randn(B, H, 5, D)}, TypeError, "share a dtype"),
    ({"q": torch.ones(B, H, 5, D, dtype=torch.long)}, TypeError, "floating-point"),
    ({"v": torch.randn(B, 2, 4, D, dtype=torch.float64)}, ValueError, "k and v must have the same shape"),
    ({"q": torch.randn(3, H, 5, D, dtype=torch.float64)}, ValueError, "same batch size"),
    ({"q": torch.randn(B, H, 5, 6, dtype=torch.float64)}, ValueError, "same head dim"),
    ({"q": torch.randn(B, 3, 5, D, dtype=torch.float64)}, ValueError, r"multiple of the kv heads"),
    ({"rope": RoPE(4)}, ValueError, r"rope.dim \(4\) must equal the head dim"),
    ({"rope": "rope"}, TypeError, "kexue.nn.RoPE"),
    ({"q": torch.randn(B, H, 6, D, dtype=torch.float64), "rope": RoPE(D)}, ValueError, "must not exceed Lk"),
    ({"positions": torch.arange(4)}, ValueError, r"positions must have shape \[5\] or \[2, 5\]"),
    ({"positions": torch.zeros(3, 5)}, ValueError, "positions must have shape"),
    ({"segment_ids": torch.tensor([[0, 0, 1, 2, 2], [0, 0, 0, 0, 0]])}, ValueError, "only 0"),
    ({"segment_ids": torch.tensor([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0]])}, ValueError, "non-decreasing"),
    ({"segment_ids": torch.zeros(B, 5)}, TypeError, "integer or bool"),
    ({"segment_ids": torch.zeros(B, 4, dtype=torch.long)}, ValueError, r"segment_ids must have shape \[B, Lk\]"),
    ({"mask_rule": "bert"}, ValueError, "mask_rule must be one of"),
    ({"key_lengths": torch.tensor([3.0, 4.0])}, TypeError, "key_lengths must be an integer"),
    ({"key_lengths": torch.tensor([3])}, ValueError, r"key_lengths must have shape \[B\]"),
    ({"key_lengths": [3, 4]}, TypeError, "key_lengths must be an integer tensor"),
    ({"attn_mask": torch.ones(B, 1, 5, 5)}, TypeError, "attn_mask must be boolean"),
    ({"attn_mask": torch.ones(B, 1, 5, dtype=torch.bool)}, ValueError, "attn_mask must have shape"),
    ({"attn_mask": torch.ones(B, 3, 5, 5, dtype=torch.bool)}, ValueError, "attn_mask must have shape"),
    ({"causal": 1}, TypeError, "causal must be a bool"),
    ({"scale": -1.0}, ValueError, "scale must be a positive"),
])
def test_bad_input(over, error, match):
    args, kwargs = _bad(**over)
    with pytest.raises(error, match=match):
        rope_attention(args["q"], args["k"], args["v"], **kwargs)
    with pytest.raises(error, match=match):
        reference_rope_attention(args["q"], args["k"], args["v"], **kwargs)


def test_bad_attention_mask_arguments():
    with pytest.raises(ValueError, match="q_len must be a non-negative int"):
        attention_mask(1, 1, -1, 3)
    with pytest.raises(ValueError, match="segment_ids need Lq <= Lk"):
        attention_mask(1, 1, 4, 3, segment_ids=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="mask_rule"):
        attention_mask(1, 1, 3, 3, mask_rule="prefix")
