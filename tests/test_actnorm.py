"""kexue.ops.actnorm against its reference, gradients, registration, and bad input."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import low_precision_ok
from kexue.ops import actnorm, reference_actnorm

SHAPES = [(6, 5), (4, 3, 7), (3, 4, 5, 5), (2, 3, 150, 150)]


def inputs(shape, dtype=torch.float64, param_dtype=None, device="cpu", seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    b = torch.randn(shape[1], generator=g, dtype=param_dtype or dtype)
    ls = 0.5 * torch.randn(shape[1], generator=g, dtype=param_dtype or dtype)
    return [v.to(device).requires_grad_(requires_grad) for v in (x, b, ls)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference(device, shape, reverse, dtype):
    x, b, ls = inputs(shape, dtype, device=device)
    y, ld = actnorm(x, b, ls, reverse=reverse)
    yr, ldr = reference_actnorm(x, b, ls, reverse=reverse)
    assert y.shape == x.shape and ld.shape == (shape[0],) and ld.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(y, yr, **tol)
    torch.testing.assert_close(ld, ldr, **tol)


# The GPU backward splits each channel's batch × spatial elements into slices of ~4096: one big
# image (1, 2, 90, 100) gives two slices cutting its only sample in half, (5, 2, 3000) three
# slices cutting samples 1 and 3.
@pytest.mark.parametrize("shape", [(4, 3, 6, 6), (8, 5), (2, 3, 150, 150), (1, 2, 90, 100), (5, 2, 3000)])
@pytest.mark.parametrize("reverse", [False, True])
def test_backward_matches_reference(device, shape, reverse):
    args = inputs(shape, torch.float64, device=device, requires_grad=True)
    ref = [a.detach().clone().requires_grad_() for a in args]
    g = torch.Generator().manual_seed(1)
    gy, gl = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape[0], generator=g, dtype=torch.float64)
    gy, gl = gy.to(device), gl.to(device)
    y, ld = actnorm(*args, reverse=reverse)
    ((y * gy).sum() + (ld * gl).sum()).backward()
    yr, ldr = reference_actnorm(*ref, reverse=reverse)
    ((yr * gy).sum() + (ldr * gl).sum()).backward()
    for a, r in zip(args, ref):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_with_fp32_params(device, dtype):
    x, b, ls = inputs((8, 6, 10, 10), torch.float32, device=device)
    xl = x.to(dtype).requires_grad_()
    b, ls = b.requires_grad_(), ls.requires_grad_()
    y, ld = actnorm(xl, b, ls)
    assert y.dtype == dtype and ld.dtype == torch.float32
    y_hi, ld_hi = reference_actnorm(xl.double(), b.double(), ls.double())
    y_lo, _ = reference_actnorm(xl, b, ls)
    ok, errs = low_precision_ok(y, y_lo, y_hi)
    assert ok, errs
    torch.testing.assert_close(ld.double(), ld_hi, rtol=1e-6, atol=1e-4)
    y.float().sum().backward()
    assert b.grad.dtype == torch.float32 and ls.grad.dtype == torch.float32 and xl.grad.dtype == dtype
    bh, lh = b.detach().double().requires_grad_(), ls.detach().double().requires_grad_()
    reference_actnorm(xl.detach().double(), bh, lh)[0].sum().backward()
    torch.testing.assert_close(b.grad.double(), bh.grad, rtol=1e-2, atol=1e-1)
    torch.testing.assert_close(ls.grad.double(), lh.grad, rtol=1e-2, atol=1e-1)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", [(3, 2, 2, 3), (4, 3)])
def test_gradcheck(device, reverse, shape):
    args = inputs(shape, torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b, ls: actnorm(x, b, ls, reverse=reverse), args)


def test_opcheck(device):
    x, b, ls = inputs((3, 4, 2, 2), torch.float32, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.kexue.actnorm.default, (x, b, ls, False))
    torch.library.opcheck(torch.ops.kexue.actnorm.default, (x, b, ls, True))
    torch.library.opcheck(
        torch.ops.kexue.actnorm_backward.default,
        (torch.randn_like(x), torch.randn(3, device=device), x.detach(), b.detach(), ls.detach(), False, [True, False, True]),
    )


def test_round_trip(device):
    x, b, ls = inputs((4, 6, 5, 5), torch.float32, device=device)
    y, ld = actnorm(x, b, ls)
    x2, ld2 = actnorm(y, b, ls, reverse=True)
    assert (x2 - x).abs().max() < 1e-5
    torch.testing.assert_close(ld + ld2, torch.zeros_like(ld))


def test_non_contiguous_and_empty(device):
    x = torch.randn(5, 6, 4, dtype=torch.float64, device=device).transpose(1, 2)  # [5, 4, 6]
    b = torch.randn(8, dtype=torch.float64, device=device)[::2]
    ls = torch.randn(4, dtype=torch.float64, device=device)
    torch.testing.assert_close(actnorm(x, b, ls)[0], reference_actnorm(x, b, ls)[0])
    e = torch.randn(0, 4, 3, device=device, requires_grad=True)
    bb = torch.randn(4, device=device, requires_grad=True)
    y, ld = actnorm(e, bb, bb)
    assert y.shape == (0, 4, 3) and ld.shape == (0,)
    (y.sum() + ld.sum()).backward()
    torch.testing.assert_close(bb.grad, torch.zeros(4, device=device))


def test_bad_inputs():
    x = torch.randn(4, 3, 5)
    b, ls = torch.zeros(3), torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"bias must have shape \[3\]"):
        actnorm(x, torch.zeros(4), ls)
    with pytest.raises(RuntimeError, match=r"log_scale must have shape \[3\]"):
        actnorm(x, b, torch.zeros(3, 1))
    with pytest.raises(RuntimeError, match=r"x must be \[batch, channels"):
        actnorm(torch.randn(3), b, ls)
    with pytest.raises(RuntimeError, match="x must be float32"):
        actnorm(x.int(), b, ls)
    with pytest.raises(RuntimeError, match="bias must be float32"):
        actnorm(x, b.long(), ls)


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(0, 6), min_size=2, max_size=4), reverse=st.booleans(), seed=st.integers(0, 999))
def test_property_random_shapes(shape, reverse, seed):
    x, b, ls = inputs(tuple(shape), seed=seed)
    y, ld = actnorm(x, b, ls, reverse=reverse)
    yr, ldr = reference_actnorm(x, b, ls, reverse=reverse)
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ld, ldr, rtol=1e-12, atol=1e-12)
