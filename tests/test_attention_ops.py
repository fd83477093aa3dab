"""The fused rope_attention / apply_rope kernels against the plain-torch reference: every mask
rule and layout, tiles cut by odd lengths, GQA, low precision, gradients, opcheck, compile."""
import pytest
import torch

import kexue

from kexue.nn import RoPE
from kexue.ops import attention as A

from conftest import low_precision_ok

SCALINGS = [None, {"type": "linear", "factor": 2.0}, {"type": "ntk", "factor": 4.0},
            {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 32},
            {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}]


def qkv(B, H, Hkv, Lq, Lk, d, device, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Lq, d, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, Lk, d, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, Lk, d, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)]


def masks(B, L, device):
    seg = torch.zeros(B, L, dtype=torch.long)
    for b in range(B):
        seg[b, (L // 3 + 7 * b) % L:] = 1
    dense = torch.rand(B, 1, L, L, generator=torch.Generator().manual_seed(1)) > 0.3
    return {
        "none": {},
        "causal": {"causal": True},
        "unilm": {"segment_ids": seg.to(device), "mask_rule": "unilm"},
        "uniae": {"segment_ids": seg.to(device), "mask_rule": "uniae"},
        "padding": {"key_lengths": torch.tensor([L, max(1, L - 50), 3][:B], device=device)},
        "dense": {"attn_mask": dense.to(device)},
        "uniae+padding+causal": {"segment_ids": seg.to(device), "mask_rule": "uniae", "causal": True,
                                 "key_lengths": torch.tensor([L - 5, L, 1][:B], device=device)},
    }


@pytest.mark.parametrize("mask", ["none", "causal", "unilm", "uniae", "padding", "dense", "uniae+padding+causal"])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_forward_backward_match_reference(device, mask, layout):
    B, H, Hkv, L, d = 3, 4, 2, 150, 16  # 150: several key tiles, the last one partial
    q, k, v = qkv(B, H, Hkv, L, L, d, device)
    kw = masks(B, L, device)[mask]
    rope = RoPE(d, layout=layout)
    pos = torch.randint(0, 500, (B, L), device=device)
    args = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_args = [t.clone().requires_grad_() for t in (q, k, v)]
    out = A.rope_attention(*args, rope=rope, positions=pos, **kw)
    ref = A.reference_rope_attention(*ref_args, rope=rope, positions=pos, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, args, g)
    ref_grads = torch.autograd.grad(ref, ref_args, g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_every_cpu_isa_matches_reference(restore_cpu_isa):
    # d = 24 and L = 150: whole-vector blocks, single vectors and scalar column tails of the tile
    # products for every vector width; B·Hkv = 2 splits the backward's keys into runs.
    for isa in kexue._C.cpu_isas():
        kexue._C.set_cpu_isa(isa)
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
            q, k, v = qkv(1, 4, 2, 150, 150, 24, "cpu", dtype)
            seg = torch.zeros(1, 150, dtype=torch.long)
            seg[:, 61:] = 1
            kw = dict(rope=RoPE(24), segment_ids=seg, mask_rule="unilm")
            args = [t.clone().requires_grad_() for t in (q, k, v)]
            ref_args = [t.double().requires_grad_() for t in (q, k, v)]
            out = A.rope_attention(*args, **kw)
            ref = A.reference_rope_attention(*ref_args, **kw)
            torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol, msg=lambda m: f"{isa} {dtype}: {m}")
            g = torch.randn_like(ref)
            for a, b in zip(torch.autograd.grad(out, args, g.to(dtype)), torch.autograd.grad(ref, ref_args, g)):
                torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol, msg=lambda m: f"{isa} {dtype}: {m}")


@pytest.mark.parametrize("scaling", SCALINGS)
def test_rope_scalings_inside_the_kernel(device, scaling):
    q, k, v = qkv(2, 2, 1, 40, 40, 8, device)
    rope = RoPE(8, scaling=scaling)
    torch.testing.assert_close(A.rope_attention(q, k, v, rope=rope, causal=True),
                               A.reference_rope_attention(q, k, v, rope=rope, causal=True), rtol=1e-10, atol=1e-10)
    x = torch.randn(2, 3, 40, 8, dtype=torch.float64, device=device)
    torch.testing.assert_close(A.apply_rope(x, None, rope), A.reference_apply_rope(x, None, rope), rtol=1e-12, atol=1e-12)


def test_decode_step_queries_take_the_last_positions(device):
    q, k, v = qkv(2, 4, 4, 3, 70, 8, device)
    rope = RoPE(8)
    for kw in ({"causal": True}, {"causal": False}):
        torch.testing.assert_close(A.rope_attention(q, k, v, rope=rope, **kw),
                                   A.reference_rope_attention(q, k, v, rope=rope, **kw), rtol=1e-10, atol=1e-10)


def test_fully_masked_rows_are_zero_with_zero_gradient(device):
    q, k, v = qkv(2, 2, 2, 9, 9, 8, device)
    mask = torch.ones(2, 1, 9, 9, dtype=torch.bool, device=device)
    mask[:, :, 4] = False  # row 4 sees nothing
    args = [t.clone().requires_grad_() for t in (q, k, v)]
    out = A.rope_attention(*args, rope=RoPE(8), attn_mask=mask)
    assert torch.isfinite(out).all() and (out[:, :, 4] == 0).all()
    grads = torch.autograd.grad(out.sum(), args)
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][:, :, 4] == 0).all()


def test_gradcheck(device):
    q, k, v = qkv(1, 2, 1, 6, 6, 4, device)
    seg = torch.tensor([[0, 0, 0, 1, 1, 1]], device=device)
    rope = RoPE(4, scaling={"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4})
    for kw in ({"causal": True}, {"segment_ids": seg, "mask_rule": "unilm"}, {"segment_ids": seg, "mask_rule": "uniae"}):
        fn = lambda a, b, c: A.rope_attention(a, b, c, rope=rope, **kw)
        assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in (q, k, v)])
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: A.apply_rope(t, None, rope), [x])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision(device, dtype):
    q, k, v = qkv(2, 4, 2, 97, 97, 32, device)
    seg = torch.zeros(2, 97, dtype=torch.long, device=device)
    seg[:, 40:] = 1
    kw = dict(rope=RoPE(32), segment_ids=seg, mask_rule="unilm")
    hi = A.reference_rope_attention(q, k, v, **kw)
    low = [t.to(dtype) for t in (q, k, v)]
    ok, info = low_precision_ok(A.rope_attention(*low, **kw), A.reference_rope_attention(*low, **kw), hi)
    assert ok, info


def test_opcheck(device):
    q, k, v = qkv(2, 2, 1, 7, 7, 4, device)
    rope = RoPE(4)
    inv, rs, inter = rope.kernel_args(7, device)
    seg = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]], device=device)
    pos = torch.arange(7, device=device).expand(2, 7).contiguous()
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), inv, rs, inter, pos, True, seg, "uniae",
            torch.tensor([7, 5], device=device), None, 0.5)
    torch.library.opcheck(torch.ops.kexue.rope_attention, args)
    x = torch.randn(2, 3, 7, 4, dtype=torch.float64, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.kexue.apply_rope, (x, pos, inv, rs, inter, False))


def test_compile_fullgraph():
    q, k, v = qkv(1, 2, 2, 9, 9, 8, "cpu", torch.float32)
    rope = RoPE(8)

    def f(q, k, v):
        return A.rope_attention(q, k, v, rope=rope, causal=True) + A.apply_rope(q, None, rope)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v))


def test_kernel_bad_inputs():
    q, k, v = qkv(1, 3, 2, 5, 5, 4, "cpu")
    with pytest.raises((RuntimeError, ValueError, TypeError), match="multiple of"):
        A.rope_attention(q, k, v)
    q, k, v = qkv(1, 2, 1, 5, 5, 4, "cpu")
    with pytest.raises((RuntimeError, ValueError, TypeError), match="mask_rule"):
        A.rope_attention(q, k, v, segment_ids=torch.zeros(1, 5, dtype=torch.long), mask_rule="prefix")
    with pytest.raises((RuntimeError, ValueError, TypeError), match="attn_mask"):
        A.rope_attention(q, k, v, attn_mask=torch.ones(1, 1, 5, 5))


def low_precision_case(q, k, v, dtype, kw, atol=1e-2):
    """Forward and the three gradients in `dtype` against float64, by the flash-attention rule."""
    hi_args = [t.clone().requires_grad_() for t in (q, k, v)]
    low_ref_args = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    low_args = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    hi = A.reference_rope_attention(*hi_args, **kw)
    ref_low = A.reference_rope_attention(*low_ref_args, **kw)
    ours = A.rope_attention(*low_args, **kw)
    ok, info = low_precision_ok(ours, ref_low, hi)
    assert ok, ("out", info)
    # A fixed cotangent: with the global generator the bound's margin depended on the tests run
    # before (dQ at d = 32 with a YaRN temperature reached 1.3× the bound for 1 cotangent in 12).
    g = torch.randn(hi.shape, generator=torch.Generator().manual_seed(0), dtype=hi.dtype).to(hi.device)
    grads = (torch.autograd.grad(hi, hi_args, g), torch.autograd.grad(ref_low, low_ref_args, g.to(dtype)),
             torch.autograd.grad(ours, low_args, g.to(dtype)))
    for name, h_, r_, o_ in zip("qkv", *grads):
        ok, info = low_precision_ok(o_, r_, h_, atol=atol)
        assert ok, (f"d{name}", info)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [32, 64, 96, 128, 80])  # 80: no tensor-core build, the SIMT path
@pytest.mark.parametrize("mask", ["causal", "unilm", "uniae+padding+causal", "dense"])
def test_tensor_core_path(gpu, dtype, d, mask):
    # Tiles of 64 cut by the end (L = 300 on a GPU, 130 on the emulator, which is slower); B·H = 6
    # with GQA; forward and all three gradients against float64 by the flash-attention rule.
    B, H, Hkv, L = 3, 2, 1, (300 if gpu == "cuda" else 130)
    q, k, v = qkv(B, H, Hkv, L, L, d, gpu)
    low_precision_case(q, k, v, dtype, dict(masks(B, L, gpu)[mask], rope=RoPE(d)))


@pytest.mark.parametrize("d", [32, 64, 96, 128])
@pytest.mark.parametrize("heads", [(2, 2), (4, 1)])
def test_tensor_core_gqa_offsets_and_layouts(gpu, d, heads):
    # GQA ratios 1 and 4; queries at the last 70 of 133 key positions (tails in both, the offset
    # in the causal and segment rules); the interleaved layout with per-sample positions and a
    # YaRN temperature (the rotation's scale, applied and inverted in the kernels).
    H, Hkv = heads
    B, Lq, Lk = 2, 70, 133
    q, k, v = qkv(B, H, Hkv, Lq, Lk, d, gpu, seed=d)
    seg = torch.zeros(B, Lk, dtype=torch.long, device=gpu)
    seg[0, 90:] = 1
    seg[1, 20:] = 1
    pos = torch.randint(0, 4000, (B, Lk), generator=torch.Generator().manual_seed(d)).to(gpu)
    rope = RoPE(d, layout="interleaved", scaling={"type": "yarn", "factor": 4.0,
                                                   "original_max_position_embeddings": 64})
    for dtype, kw in ((torch.bfloat16, dict(causal=True, key_lengths=torch.tensor([130, 101], device=gpu))),
                      (torch.float16, dict(segment_ids=seg, mask_rule="unilm")),
                      (torch.bfloat16, dict(segment_ids=seg, mask_rule="uniae"))):
        low_precision_case(q, k, v, dtype, dict(kw, rope=rope, positions=pos))


@pytest.mark.parametrize("mask", ["none", "padding"])
def test_tensor_core_no_rope_and_full_tiles(gpu, mask):
    # Without RoPE the kernels rotate nothing; L = 128 cuts no tile, so "none" runs only tiles
    # that skip the per-element test.
    B, L, d = 2, 128, 64
    q, k, v = qkv(B, 2, 1, L, L, d, gpu, seed=3)
    low_precision_case(q, k, v, torch.bfloat16, masks(B, L, gpu)[mask])


@pytest.mark.simt
@pytest.mark.skipif(not kexue.build_info()["simt"], reason="this build has no SIMT emulator")
def test_tensor_core_results_do_not_depend_on_the_schedule():
    # Racecheck by schedule: the threads of a block (and the blocks) run in order, reversed and in
    # two shuffles; the outputs and all gradients must agree bit for bit (this is also the
    # deterministic backward: no atomics, fixed reduction order).
    q, k, v = qkv(2, 4, 2, 100, 100, 64, "cpu", torch.bfloat16, seed=7)
    seg = torch.zeros(2, 100, dtype=torch.long)
    seg[:, 30:] = 1
    kw = dict(rope=RoPE(64), segment_ids=seg, mask_rule="unilm", key_lengths=torch.tensor([100, 77]))
    g = torch.randn(2, 4, 100, 64, generator=torch.Generator().manual_seed(8)).to(torch.bfloat16)
    results = []
    kexue._C.set_cpu_backend("simt")
    try:
        for schedule, seed in (("forward", 0), ("reverse", 0), ("shuffle", 1), ("shuffle", 2)):
            kexue._C.simt_configure(schedule, seed)
            args = [t.clone().requires_grad_() for t in (q, k, v)]
            out = A.rope_attention(*args, **kw)
            results.append((out, *torch.autograd.grad(out, args, g)))
    finally:
        kexue._C.simt_configure("forward", 0)
        kexue._C.set_cpu_backend("cpu")
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_tensor_core_inputs_at_odd_offsets(gpu):
    # The kernels copy rows by 16 bytes: views starting 2 bytes into their storage give the same
    # result (bit for bit) as their aligned copies.
    q, k, v = qkv(1, 2, 2, 40, 40, 64, gpu, torch.bfloat16)
    go = torch.randn_like(q)

    def odd(t):
        flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        view = flat[1:].view(t.shape)
        view.copy_(t)
        assert view.data_ptr() % 16 != 0
        return view.requires_grad_()

    results = []
    for make in (lambda t: t.clone().requires_grad_(), odd):
        args = [make(t) for t in (q, k, v)]
        out = A.rope_attention(*args, rope=RoPE(64), causal=True)
        g = go if make is not odd else odd(go).detach()
        results.append((out, *torch.autograd.grad(out, args, g)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_tensor_core_nan_query_gives_a_nan_row(gpu):
    # One NaN in one row of a warp's 16: only that row's lanes see it while the others reduce
    # their rows' maxima; its output row and dQ row are NaN, every other row is finite.
    q, k, v = qkv(1, 2, 1, 70, 70, 64, gpu, torch.bfloat16)
    q[0, 1, 3, 0] = float("nan")
    args = [t.clone().requires_grad_() for t in (q, k, v)]
    out = A.rope_attention(*args, rope=RoPE(64), causal=True)
    rows = [i for i in range(70) if i != 3]
    assert out[0, 1, 3].isnan().all() and torch.isfinite(out[0, 0]).all() and torch.isfinite(out[0, 1, rows]).all()
    dq = torch.autograd.grad(out.float().sum(), args[0])[0]
    assert dq[0, 1, 3].isnan().all() and torch.isfinite(dq[0, 1, rows]).all() and torch.isfinite(dq[0, 0]).all()


def test_tensor_core_path_empty_rows_and_decode(gpu):
    q, k, v = qkv(2, 4, 2, 70, 70, 64, gpu, torch.bfloat16)
    mask = torch.ones(2, 1, 70, 70, dtype=torch.bool, device=gpu)
    mask[:, :, 5] = False
    args = [t.clone().requires_grad_() for t in (q, k, v)]
    out = A.rope_attention(*args, rope=RoPE(64), attn_mask=mask)
    assert torch.isfinite(out).all() and (out[:, :, 5] == 0).all()
    grads = torch.autograd.grad(out.float().sum(), args)
    assert all(torch.isfinite(g).all() for g in grads) and (grads[0][:, :, 5] == 0).all()
    q1 = q[:, :, -3:].contiguous()  # three decode queries at the last positions
    ok, info = low_precision_ok(A.rope_attention(q1, k, v, rope=RoPE(64), causal=True),
                                A.reference_rope_attention(q1, k, v, rope=RoPE(64), causal=True),
                                A.reference_rope_attention(*(t.double() for t in (q1, k, v)), rope=RoPE(64), causal=True))
    assert ok, info


@pytest.mark.parametrize("d,with_rope", [(1, False), (3, False), (5, False), (2, True), (6, True), (255, False),
                                         (256, True)])
def test_head_dims_from_one_to_the_largest(device, d, with_rope):
    # Odd head dims (no RoPE) leave one column outside the rotation pairs; 256 is the largest the
    # SIMT kernels hold per lane. A single query row and a decode step ride along.
    rope = RoPE(d) if with_rope else None
    for Lq, Lk in ((9, 9), (1, 1), (2, 9)):
        q, k, v = qkv(2, 2, 1, Lq, Lk, d, device)
        args = [t.clone().requires_grad_() for t in (q, k, v)]
        ref_args = [t.clone().requires_grad_() for t in (q, k, v)]
        out = A.rope_attention(*args, rope=rope, causal=True)
        ref = A.reference_rope_attention(*ref_args, rope=rope, causal=True)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(out)
        for a, b in zip(torch.autograd.grad(out, args, g), torch.autograd.grad(ref, ref_args, g)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
        if with_rope:
            x = torch.randn(2, 2, Lq, d, dtype=torch.float64, device=device)
            torch.testing.assert_close(A.apply_rope(x, None, rope), A.reference_apply_rope(x, None, rope),
                                       rtol=1e-12, atol=1e-12)


def test_empty_batch(device):
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = qkv(0, 2, 1, 5, 5, 32, device, dtype)
        args = [t.clone().requires_grad_() for t in (q, k, v)]
        out = A.rope_attention(*args, rope=RoPE(32), causal=True)
        assert out.shape == (0, 2, 5, 32)
        assert all(g.shape == t.shape for g, t in zip(torch.autograd.grad(out.float().sum(), args), args))
