"""kexue.ops.coupling against its reference, gradients, registration, and bad input."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kexue
from conftest import low_precision_ok
from kexue.ops import coupling, reference_coupling

SCALES = ["exp", "sigmoid", "tanh", "none"]
SHAPES = [(5, 12), (3, 4, 6, 6), (2, 40000)]  # the last spans several kernel chunks per sample


def make_mask(kind, shape, device):
    """Masks of every broadcasting form the op accepts."""
    g = torch.Generator().manual_seed(7)
    if kind is None:
        return None
    if kind == "sample":  # one mask for all samples, no batch dim (checkerboard style)
        return (torch.rand(shape[1:], generator=g) > 0.5).to(device)
    if kind == "leading1":  # [1, ...] float 0/1
        return (torch.rand((1,) + tuple(shape[1:]), generator=g) > 0.5).float().to(device)
    if kind == "channel":  # broadcast over trailing dims: [C, 1, 1] or [D]
        tail = (shape[1],) + (1,) * (len(shape) - 2)
        return (torch.arange(shape[1]) % 2 == 0).view(tail).to(device)
    if kind == "full":  # a different mask for every sample
        return (torch.rand(shape, generator=g) > 0.5).to(device)
    raise ValueError(kind)


def inputs(shape, scale, dtype=torch.float64, device="cpu", seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    s = None if scale == "none" else torch.randn(shape, generator=g, dtype=dtype)
    t = torch.randn(shape, generator=g, dtype=dtype)
    out = [v.to(device).requires_grad_(requires_grad) if v is not None else None for v in (x, s, t)]
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "sample", "leading1", "channel", "full"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference(device, shape, scale, reverse, mask_kind, dtype):
    x, s, t = inputs(shape, scale, dtype, device)
    mask = make_mask(mask_kind, shape, device)
    clamp = 1.5 if scale == "tanh" else None
    y, ld = coupling(x, s, t, scale=scale, reverse=reverse, mask=mask, clamp=clamp)
    yr, ldr = reference_coupling(x, s, t, scale=scale, reverse=reverse, mask=mask, clamp=clamp)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-5)
    assert y.dtype == dtype and ld.dtype == dtype and ld.shape == (shape[0],)
    torch.testing.assert_close(y, yr, **tol)
    if dtype == torch.float64:
        torch.testing.assert_close(ld, ldr, rtol=1e-12, atol=1e-10)
    else:  # long fp32 sums: hold our summation error to the reference's
        args64 = [v.double() if v is not None else None for v in (x, s, t)]
        _, ld64 = reference_coupling(*args64, scale=scale, reverse=reverse, mask=mask, clamp=clamp)
        ok, errs = low_precision_ok(ld, ldr, ld64, atol=1e-4)
        assert ok, errs


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("reverse", [False, True])
def test_backward_matches_reference(device, scale, reverse):
    shape = (4, 3, 5, 5)
    mask = make_mask("sample", shape, device)
    args = inputs(shape, scale, torch.float32, device, requires_grad=True)
    ref_args = [a.detach().clone().requires_grad_() if a is not None else None for a in args]
    g = torch.Generator().manual_seed(3)
    gy = torch.randn(shape, generator=g).to(device)
    gl = torch.randn(shape[0], generator=g).to(device)
    y, ld = coupling(*args, scale=scale, reverse=reverse, mask=mask)
    ((y * gy).sum() + (ld * gl).sum()).backward()
    yr, ldr = reference_coupling(*ref_args, scale=scale, reverse=reverse, mask=mask)
    ((yr * gy).sum() + (ldr * gl).sum()).backward()
    for a, r in zip(args, ref_args):
        if a is not None:
            torch.testing.assert_close(a.grad, r.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale", ["exp", "sigmoid", "tanh"])
def test_low_precision(device, dtype, scale):
    shape = (8, 4, 8, 8)
    x, s, t = inputs(shape, scale, torch.float32, device)
    s = s * 0.5
    xl, sl, tl = (v.to(dtype) for v in (x, s, t))
    y, ld = coupling(xl, sl, tl, scale=scale)
    assert y.dtype == dtype and ld.dtype == torch.float32
    y_hi, ld_hi = reference_coupling(xl.double(), sl.double(), tl.double(), scale=scale)
    y_lo, ld_lo = reference_coupling(xl, sl, tl, scale=scale)
    ok, errs = low_precision_ok(y, y_lo, y_hi)
    assert ok, errs
    ok, errs = low_precision_ok(ld, ld_lo, ld_hi)
    assert ok, errs
    # gradients too
    args = [v.clone().requires_grad_() for v in (xl, sl, tl)]
    y, ld = coupling(*args, scale=scale)
    (y.float().square().sum() + ld.sum()).backward()
    hi = [v.double().requires_grad_() for v in (xl, sl, tl)]
    y, ld = reference_coupling(*hi, scale=scale)
    (y.square().sum() + ld.sum()).backward()
    lo = [v.clone().requires_grad_() for v in (xl, sl, tl)]
    y, ld = reference_coupling(*lo, scale=scale)
    (y.float().square().sum() + ld.sum()).backward()
    for a, h, l in zip(args, hi, lo):
        ok, errs = low_precision_ok(a.grad, l.grad, h.grad, atol=1e-2)
        assert ok, errs


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "sample", "full"])
def test_gradcheck(device, scale, reverse, mask_kind):
    shape = (3, 2, 3, 2)
    x, s, t = inputs(shape, scale, torch.float64, device, requires_grad=True)
    mask = make_mask(mask_kind, shape, device)
    clamp = 0.8 if scale == "tanh" else None
    fn = lambda x, s, t: coupling(x, s, t, scale=scale, reverse=reverse, mask=mask, clamp=clamp)
    assert torch.autograd.gradcheck(fn, (x, s, t), eps=1e-6, atol=1e-7)


def test_gradcheck_no_shift(device):
    x, s, _ = inputs((3, 5), "exp", torch.float64, device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s: coupling(x, s, None), (x, s))


def test_only_some_inputs_need_grad(device):
    x, s, t = inputs((4, 6), "exp", torch.float32, device)
    s.requires_grad_()
    y, ld = coupling(x, s, t)
    (y.sum() + ld.sum()).backward()
    sr = s.detach().clone().requires_grad_()
    yr, ldr = reference_coupling(x, sr, t)
    (yr.sum() + ldr.sum()).backward()
    torch.testing.assert_close(s.grad, sr.grad)
    # logdet unused: its gradient is taken as zero
    s.grad = None
    coupling(x, s, t)[0].sum().backward()
    torch.testing.assert_close(s.grad, (x * s.exp()).detach())


@pytest.mark.parametrize("scale", ["exp", "none", "tanh"])
@pytest.mark.parametrize("mask_kind", [None, "sample"])
def test_opcheck(device, scale, mask_kind):
    shape = (3, 4, 2, 2)
    x, s, t = inputs(shape, scale, torch.float32, device, requires_grad=True)
    mask = make_mask(mask_kind, shape, device)
    clamp = 1.0 if scale == "tanh" else 0.0
    torch.library.opcheck(torch.ops.kexue.coupling.default, (x, s, t, mask, scale, False, clamp))
    torch.library.opcheck(torch.ops.kexue.coupling.default, (x, s, t, mask, scale, True, clamp))
    g, gl = torch.randn_like(x), torch.randn(shape[0], device=device)
    torch.library.opcheck(
        torch.ops.kexue.coupling_backward.default,
        (g, gl, x.detach(), s.detach() if s is not None else None, t.detach(), mask, scale, False, clamp, [True, True, False]),
    )


def test_non_contiguous(device):
    base = torch.randn(6, 10, 8, dtype=torch.float64, device=device)
    x = base.transpose(1, 2)  # [6, 8, 10], non-contiguous
    s = torch.randn(6, 8, 20, dtype=torch.float64, device=device)[..., ::2]
    t = torch.randn(8, 6, 10, dtype=torch.float64, device=device).transpose(0, 1)
    mask = (torch.rand(10, 8, device=device) > 0.5).t()
    assert not (x.is_contiguous() or s.is_contiguous() or t.is_contiguous() or mask.is_contiguous())
    y, ld = coupling(x, s, t, mask=mask)
    yr, ldr = reference_coupling(x, s, t, mask=mask)
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(ld, ldr)


def test_empty_batch(device):
    x, s, t = inputs((0, 3, 4), "exp", torch.float32, device, requires_grad=True)
    y, ld = coupling(x, s, t)
    assert y.shape == (0, 3, 4) and ld.shape == (0,)
    (y.sum() + ld.sum()).backward()
    assert x.grad.shape == x.shape and s.grad.shape == s.shape


def test_zero_features(device):
    x, s, t = inputs((3, 0), "exp", torch.float32, device, requires_grad=True)
    y, ld = coupling(x, s, t)
    assert y.shape == (3, 0)
    torch.testing.assert_close(ld, torch.zeros(3, device=device))
    (y.sum() + ld.sum()).backward()


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("mask_kind", [None, "channel"])
def test_round_trip(device, scale, mask_kind):
    shape = (4, 6, 5, 5)
    x, s, t = inputs(shape, scale, torch.float32, device)
    mask = make_mask(mask_kind, shape, device)
    y, ld = coupling(x, s, t, scale=scale, mask=mask)
    x2, ld2 = coupling(y, s, t, scale=scale, mask=mask, reverse=True)
    assert (x2 - x).abs().max() < 1e-5 * max(1.0, y.abs().max().item())
    torch.testing.assert_close(ld + ld2, torch.zeros_like(ld), atol=1e-4, rtol=0)
    x64, s64, t64 = inputs(shape, scale, torch.float64, device)
    y, _ = coupling(x64, s64, t64, scale=scale, mask=mask)
    x2, _ = coupling(y, s64, t64, scale=scale, mask=mask, reverse=True)
    assert (x2 - x64).abs().max() < 1e-10


def test_deterministic(device):
    x, s, t = inputs((3, 70000), "sigmoid", torch.float32, device)
    a = coupling(x, s, t, scale="sigmoid")
    b = coupling(x, s, t, scale="sigmoid")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_nan_propagates_like_reference(device):
    x, s, t = inputs((3, 8), "exp", torch.float32, device)
    x[1, 2] = float("nan")
    s[2, 5] = float("nan")
    y, ld = coupling(x, s, t)
    yr, ldr = reference_coupling(x, s, t)
    assert torch.equal(y.isnan(), yr.isnan()) and torch.equal(ld.isnan(), ldr.isnan())
    assert ld[2].isnan() and not ld[:2].isnan().any()


def test_extreme_scales_stay_finite(device):
    # sigmoid and tanh bound the factor: huge s must not overflow or produce NaN
    x = torch.ones(2, 4, device=device)
    s = torch.tensor([[1e4, -1e4, 80.0, -80.0]] * 2, device=device)
    for scale in ("sigmoid", "tanh"):
        y, ld = coupling(x, s, torch.zeros_like(x), scale=scale)
        yr, ldr = reference_coupling(x.double(), s.double(), torch.zeros_like(x).double(), scale=scale)
        assert torch.isfinite(y).all() and torch.isfinite(ld).all()
        torch.testing.assert_close(y.double(), yr, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ld.double(), ldr, rtol=1e-5, atol=1e-4)


def test_bad_inputs():
    x = torch.randn(4, 6)
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    with pytest.raises(ValueError, match="scale must be one of"):
        coupling(x, s, t, scale="softplus")
    with pytest.raises(ValueError, match="clamp only applies"):
        coupling(x, s, t, scale="exp", clamp=2.0)
    with pytest.raises(ValueError, match="clamp must be a positive finite number"):
        coupling(x, s, t, scale="tanh", clamp=0.0)
    with pytest.raises(RuntimeError, match=r"s must have the shape of x \[4, 6\]"):
        coupling(x, torch.randn(4, 5), t)
    with pytest.raises(RuntimeError, match="t must have dtype"):
        coupling(x, s, t.double())
    with pytest.raises(RuntimeError, match="x must be float32, float64, float16 or bfloat16"):
        coupling(x.long(), s.long(), t.long())
    with pytest.raises(RuntimeError, match="needs s"):
        coupling(x, None, t, scale="exp")
    with pytest.raises(RuntimeError, match="takes no s"):
        coupling(x, s, t, scale="none")
    with pytest.raises(RuntimeError, match="does not broadcast"):
        coupling(x, s, t, mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="more dimensions"):
        coupling(x, s, t, mask=torch.ones(1, 4, 6, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="batch dimension"):
        coupling(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="grad_logdet must have shape"):
        torch.ops.kexue.coupling_backward(x, torch.zeros(3), x, s, t, None, "exp", False, 0.0, [True, True, True])


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_cpu_isa_matches_reference(isa, restore_cpu_isa):
    if isa not in kexue._C.cpu_isas():
        pytest.skip(f"this CPU or build has no {isa}")
    kexue._C.set_cpu_isa(isa)
    assert kexue.build_info()["cpu_isa"] == isa
    for dtype in (torch.float32, torch.float64):
        for scale in SCALES:
            for reverse in (False, True):
                shape = (3, 5, 7, 9)  # 315 per sample: vector bodies and scalar tails
                x, s, t = inputs(shape, scale, dtype, requires_grad=True)
                mask = make_mask("sample", shape, "cpu")
                y, ld = coupling(x, s, t, scale=scale, reverse=reverse, mask=mask)
                grads = torch.autograd.grad((y.square().sum() + ld.sum()), [v for v in (x, s, t) if v is not None])
                yr, ldr = reference_coupling(x, s, t, scale=scale, reverse=reverse, mask=mask)
                gr = torch.autograd.grad((yr.square().sum() + ldr.sum()), [v for v in (x, s, t) if v is not None])
                tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(y, yr, **tol)
                torch.testing.assert_close(ld, ldr, **tol)
                for a, b in zip(grads, gr):
                    torch.testing.assert_close(a, b, **tol)


def test_unknown_cpu_isa_is_refused():
    with pytest.raises(ValueError, match="unknown CPU instruction set"):
        kexue._C.set_cpu_isa("sse9")


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(0, 7), min_size=1, max_size=4),
    scale=st.sampled_from(SCALES),
    reverse=st.booleans(),
    mask_kind=st.sampled_from([None, "sample", "full"]),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes(shape, scale, reverse, mask_kind, seed):
    shape = tuple(shape)
    x, s, t = inputs(shape, scale, torch.float64, "cpu", seed=seed)
    mask = make_mask(mask_kind, shape, "cpu") if len(shape) > 1 or mask_kind == "full" else None
    y, ld = coupling(x, s, t, scale=scale, reverse=reverse, mask=mask)
    yr, ldr = reference_coupling(x, s, t, scale=scale, reverse=reverse, mask=mask)
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ld, ldr, rtol=1e-12, atol=1e-11)
