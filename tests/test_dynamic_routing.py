"""kexue.ops.dynamic_routing against the paper's pseudo-code, gradients, registration, bad input."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import low_precision_ok
from kexue.ops import dynamic_routing, reference_dynamic_routing
from kexue.ops.capsules import reference_squash

SQUASHES = ["sabour", "post"]


def make_u(shape, dtype=torch.float64, device="cpu", seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)
    return u.requires_grad_(requires_grad)


@pytest.mark.parametrize("shape", [(3, 7, 4, 5), (2, 40, 10, 16), (2, 3, 70, 5)])
@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("squash", SQUASHES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference(device, shape, iterations, squash, dtype):
    # (2, 3, 70, 5): N_out·D = 350 exceeds one CUDA block's worth of threads
    u = make_u(shape, dtype, device)
    v, c = dynamic_routing(u, iterations, squash=squash, return_couplings=True)
    vr, cr = reference_dynamic_routing(u, iterations, squash=squash, return_couplings=True)
    assert v.shape == shape[:1] + shape[2:] and c.shape == shape[:3]
    assert v.dtype == dtype and c.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, vr, **tol)
    torch.testing.assert_close(c, cr, **tol)


@pytest.mark.parametrize("squash", SQUASHES)
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backward_matches_reference(device, squash, detach, dtype):
    u = make_u((3, 12, 6, 8), dtype, device, requires_grad=True)
    ur = u.detach().clone().requires_grad_()
    g = torch.randn(3, 6, 8, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)
    (gu,) = torch.autograd.grad(dynamic_routing(u, 3, squash=squash, detach_routing=detach), u, g)
    (gr,) = torch.autograd.grad(reference_dynamic_routing(ur, 3, squash=squash, detach_routing=detach), ur, g)
    tol = dict(rtol=1e-11, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gu, gr, **tol)


@pytest.mark.parametrize("dim", [16, 5])
def test_every_cpu_isa_matches_reference(restore_cpu_isa, dim):
    # dim 16: one AVX-512 vector (two AVX2 ones) per capsule; 5: scalar tails only.
    import kexue

    for isa in kexue._C.cpu_isas():
        kexue._C.set_cpu_isa(isa)
        for dtype, tol in ((torch.float64, 1e-11), (torch.float32, 1e-4)):
            u = make_u((3, 20, 6, dim), dtype, requires_grad=True)
            ur = u.detach().double().requires_grad_()
            g = torch.randn(3, 6, dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
            for detach in (False, True):
                v = dynamic_routing(u, 3, detach_routing=detach)
                vr = reference_dynamic_routing(ur, 3, detach_routing=detach)
                torch.testing.assert_close(v.double(), vr, rtol=tol, atol=tol, msg=lambda m: f"{isa} {dtype}: {m}")
                (gu,) = torch.autograd.grad(v, u, g.to(dtype))
                (gr,) = torch.autograd.grad(vr, ur, g)
                torch.testing.assert_close(gu.double(), gr, rtol=tol, atol=tol, msg=lambda m: f"{isa} {dtype}: {m}")


@pytest.mark.parametrize("detach", [False, True])
def test_saved_state_gives_the_recomputed_gradient(device, detach):
    # The backward reads the forward's per-iteration state instead of recomputing the routing:
    # the same numbers, bit for bit; 60 iterations of (2, 4, 3, 2) would be larger than u_hat
    # itself, so that forward keeps none and the backward recomputes.
    u = make_u((3, 12, 6, 8), torch.float32, device=device)
    g = torch.randn(3, 6, 8, generator=torch.Generator().manual_seed(3)).to(device)
    grads = []
    for save in (True, False):
        v, c, state = torch.ops.kexue.dynamic_routing(u, 3, "sabour", detach, save)
        assert state.shape == ((3, 3 * 12 * 6 + 2 * 3 * 6 * 8) if save else (0,)) and state.dtype == torch.float32
        grads.append(torch.ops.kexue.dynamic_routing_backward(g, u, 3, "sabour", detach, state if save else None))
    assert torch.equal(grads[0], grads[1])
    v, c, state = torch.ops.kexue.dynamic_routing(u, 3, "sabour", detach, True)
    other = torch.ops.kexue.dynamic_routing_backward(g, u, 3, "sabour", detach, state + 0.5)
    assert not torch.equal(other, grads[0])  # the backward does read the state
    ur = make_u((3, 12, 6, 8), torch.float32, device=device, requires_grad=True)
    (gr,) = torch.autograd.grad(dynamic_routing(ur, 3, detach_routing=detach), ur, g)
    assert torch.equal(gr, grads[0])
    small = make_u((2, 4, 3, 2), device=device)
    assert torch.ops.kexue.dynamic_routing(small, 60, "sabour", False, True)[2].numel() == 0


@pytest.mark.skipif(not __import__("kexue").build_info()["simt"], reason="this build has no SIMT emulator")
@pytest.mark.parametrize("forward_on", ["simt", "cpu"])
def test_state_kept_by_one_backend_read_by_the_other(forward_on):
    # The CUDA kernels (here on the emulator) and the CPU kernels keep the same state: a backward
    # on either reads what a forward on the other kept.
    from conftest import on_backend

    u = make_u((2, 30, 4, 8), requires_grad=True)
    ur = u.detach().clone().requires_grad_()
    g = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with on_backend(forward_on):
        v = dynamic_routing(u, 3)
    with on_backend("cpu" if forward_on == "simt" else "simt"):
        (gu,) = torch.autograd.grad(v, u, g)
    (gr,) = torch.autograd.grad(reference_dynamic_routing(ur, 3), ur, g)
    torch.testing.assert_close(gu, gr, rtol=1e-10, atol=1e-11)


def test_detach_changes_gradient_not_value(device):
    u = make_u((2, 5, 3, 4), device=device, requires_grad=True)
    v1, v2 = dynamic_routing(u, 3), dynamic_routing(u, 3, detach_routing=True)
    torch.testing.assert_close(v1, v2, rtol=0, atol=0)
    g1 = torch.autograd.grad(v1.sum(), u)[0]
    g2 = torch.autograd.grad(v2.sum(), u)[0]
    assert (g1 - g2).abs().max() > 1e-6


def test_couplings_sum_to_one(device):
    u = make_u((4, 9, 6, 3), torch.float32, device)
    _, c = dynamic_routing(u, 3, return_couplings=True)
    torch.testing.assert_close(c.sum(-1), torch.ones(4, 9, device=device))
    assert (c >= 0).all()


def test_one_iteration_is_uniform_average(device):
    u = make_u((2, 6, 5, 4), device=device)
    v, c = dynamic_routing(u, 1, return_couplings=True)
    torch.testing.assert_close(c, torch.full_like(c, 1 / 5))
    s = u.sum(1) / 5
    q = (s * s).sum(-1, keepdim=True)
    torch.testing.assert_close(v, q / (1 + q) * s / q.sqrt())


@pytest.mark.parametrize("shape", [(3, 1, 4, 5), (3, 6, 1, 5), (3, 1, 1, 1), (2, 4, 3, 1)])
def test_degenerate_sizes(device, shape):
    u = make_u(shape, device=device, requires_grad=True)
    v, c = dynamic_routing(u, 3, return_couplings=True)
    vr, cr = reference_dynamic_routing(u, 3, return_couplings=True)
    torch.testing.assert_close(v, vr)
    torch.testing.assert_close(c, cr)
    g = torch.autograd.grad(v.square().sum(), u)[0]
    gr = torch.autograd.grad(vr.square().sum(), u)[0]
    torch.testing.assert_close(g, gr)
    if shape[2] == 1:
        torch.testing.assert_close(c, torch.ones_like(c))


@pytest.mark.parametrize("squash", SQUASHES)
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("iterations", [1, 3])
def test_gradcheck(device, squash, detach, iterations):
    u = make_u((2, 4, 3, 3), device=device, requires_grad=True)
    if not detach or iterations == 1:  # then the op's gradient is the true derivative
        fn = lambda u: dynamic_routing(u, iterations, squash=squash, detach_routing=detach)
        assert torch.autograd.gradcheck(fn, (u,), eps=1e-6, atol=1e-7)
        return
    # detach_routing: the gradient is the derivative of squash(Σ_i c_ij û_ij) with c frozen at
    # its final value, so check against the numerical Jacobian of exactly that function
    _, c = dynamic_routing(u.detach(), iterations, squash=squash, return_couplings=True)
    frozen = lambda x: reference_squash((c.unsqueeze(-1) * x).sum(1), squash).reshape(-1)
    x0, eps, cols = u.detach().reshape(-1), 1e-6, []
    for k in range(x0.numel()):  # central differences, one input element at a time
        e = torch.zeros_like(x0)
        e[k] = eps
        cols.append((frozen((x0 + e).view_as(u)) - frozen((x0 - e).view_as(u))) / (2 * eps))
    J = torch.stack(cols, 0)  # [u.numel(), v.numel()]
    v = dynamic_routing(u, iterations, squash=squash, detach_routing=True)
    rows = [torch.autograd.grad(v.reshape(-1)[k], u, retain_graph=True)[0].reshape(-1)
            for k in range(v.numel())]
    torch.testing.assert_close(torch.stack(rows, 1), J, rtol=1e-5, atol=1e-7)


def test_zero_input_gives_zero_without_nan(device):
    u = torch.zeros(2, 5, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    for squash in SQUASHES:
        v, c = dynamic_routing(u, 3, squash=squash, return_couplings=True)
        assert torch.equal(v, torch.zeros_like(v))
        torch.testing.assert_close(c, torch.full_like(c, 1 / 3))
        (g,) = torch.autograd.grad(v.sum(), u)
        assert torch.isfinite(g).all()


def test_empty(device):
    for shape in [(0, 4, 3, 2), (2, 0, 3, 2), (2, 4, 3, 0)]:
        u = make_u(shape, torch.float32, device, requires_grad=True)
        v, c = dynamic_routing(u, 3, return_couplings=True)
        vr, cr = reference_dynamic_routing(u, 3, return_couplings=True)
        assert v.shape == vr.shape and c.shape == cr.shape
        torch.testing.assert_close(v, vr)
        torch.testing.assert_close(c, cr)
        v.sum().backward()
        assert u.grad.shape == u.shape


def test_non_contiguous(device):
    base = make_u((3, 4, 6, 5), device=device)
    u = base.transpose(1, 2)  # [3, 6, 4, 5]
    assert not u.is_contiguous()
    torch.testing.assert_close(dynamic_routing(u, 3), reference_dynamic_routing(u, 3))


def test_deterministic(device):
    u = make_u((4, 64, 10, 16), torch.float32, device, requires_grad=True)
    a = torch.autograd.grad(dynamic_routing(u, 3).square().sum(), u)[0]
    b = torch.autograd.grad(dynamic_routing(u, 3).square().sum(), u)[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(device, dtype):
    u = make_u((4, 32, 10, 16), torch.float32, device).mul(0.3).to(dtype).requires_grad_()
    v = dynamic_routing(u, 3)
    assert v.dtype == dtype
    hi = u.detach().double().requires_grad_()
    vh = reference_dynamic_routing(hi, 3)
    # the reference's own low-precision run: inputs and every intermediate in the low dtype
    lo = u.detach().clone().requires_grad_()
    b = torch.zeros(lo.shape[:3], dtype=dtype, device=device)
    for r in range(3):
        c = torch.softmax(b, 2)
        s = (c.unsqueeze(-1) * lo).sum(1)
        q = (s * s).sum(-1, keepdim=True)
        vl = q / (1 + q) * s / torch.sqrt(q + 1e-12)
        if r < 2:
            b = b + (lo * vl.unsqueeze(1)).sum(-1)
    ok, errs = low_precision_ok(v, vl, vh)
    assert ok, errs
    g = torch.randn(v.shape, generator=torch.Generator().manual_seed(2)).to(device)
    (gu,) = torch.autograd.grad(v, u, g.to(dtype))
    (gh,) = torch.autograd.grad(vh, hi, g.double())
    (gl,) = torch.autograd.grad(vl, lo, g.to(dtype))
    ok, errs = low_precision_ok(gu, gl, gh, atol=1e-2)
    assert ok, errs


def test_opcheck(device):
    u = make_u((2, 5, 3, 4), torch.float32, device, requires_grad=True)
    for squash, detach in [("sabour", False), ("post", True)]:
        torch.library.opcheck(torch.ops.kexue.dynamic_routing.default, (u, 3, squash, detach))
    g = torch.randn(2, 3, 4, device=device)
    torch.library.opcheck(torch.ops.kexue.dynamic_routing_backward.default,
                          (g, u.detach(), 3, "sabour", False))


def test_compile_fullgraph():
    u = make_u((2, 6, 3, 4), requires_grad=True)
    fn = torch.compile(lambda u: dynamic_routing(u, 3, squash="post"), fullgraph=True, backend="aot_eager")
    v = fn(u)
    torch.testing.assert_close(v, reference_dynamic_routing(u, 3, squash="post"))
    g = torch.autograd.grad(v.sum(), u)[0]
    ur = u.detach().clone().requires_grad_()
    gr = torch.autograd.grad(reference_dynamic_routing(ur, 3, squash="post").sum(), ur)[0]
    torch.testing.assert_close(g, gr)


def test_bad_inputs():
    u = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"u_hat must have shape \[B, N_in, N_out, D\]"):
        dynamic_routing(u[0])
    with pytest.raises(ValueError, match=r"iterations must be in \[1, 1000\]"):
        dynamic_routing(u, 0)
    with pytest.raises(ValueError, match="squash must be one of"):
        dynamic_routing(u, squash="hinton")
    # the raw op checks too
    with pytest.raises(RuntimeError, match=r"u_hat must have shape \[B, N_in, N_out, D\]"):
        torch.ops.kexue.dynamic_routing(u[0], 3, "sabour", False)
    with pytest.raises(RuntimeError, match="iterations must be >= 1"):
        torch.ops.kexue.dynamic_routing(u, 0, "sabour", False)
    with pytest.raises(RuntimeError, match="squash must be one of 'sabour', 'post'"):
        torch.ops.kexue.dynamic_routing(u, 3, "hinton", False)
    with pytest.raises(RuntimeError, match="u_hat must be float32, float64, float16 or bfloat16"):
        torch.ops.kexue.dynamic_routing(u.long(), 3, "sabour", False)
    with pytest.raises(RuntimeError, match=r"grad_v must have shape \[2, 4, 5\]"):
        torch.ops.kexue.dynamic_routing_backward(torch.zeros(2, 4, 4), u, 3, "sabour", False)
    with pytest.raises(RuntimeError, match="grad_v must have dtype"):
        torch.ops.kexue.dynamic_routing_backward(torch.zeros(2, 4, 5, dtype=torch.float64), u, 3,
                                                 "sabour", False)


@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(0, 3), st.integers(1, 9), st.integers(1, 7), st.integers(1, 6)),
    iterations=st.integers(1, 4),
    squash=st.sampled_from(SQUASHES),
    detach=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes(shape, iterations, squash, detach, seed):
    u = make_u(shape, seed=seed, requires_grad=True)
    v, c = dynamic_routing(u, iterations, squash=squash, detach_routing=detach, return_couplings=True)
    vr, cr = reference_dynamic_routing(u, iterations, squash=squash, detach_routing=detach,
                                       return_couplings=True)
    torch.testing.assert_close(v, vr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, cr, rtol=1e-12, atol=1e-12)
    g = torch.randn(v.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (gu,) = torch.autograd.grad(v, u, g)
    (gr,) = torch.autograd.grad(vr, u, g)
    torch.testing.assert_close(gu, gr, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("iterations", [1, 2])  # 1: the state is kept; 2: the backward re-routes
def test_batch_beyond_the_block_count(device, iterations):
    """More samples than the GPU launches blocks (2048): blocks stride over the batch, each
    reusing its workspace slice; the results must not depend on which block took a sample."""
    g = torch.Generator().manual_seed(3)
    u = torch.randn(2100, 3, 2, 4, generator=g, dtype=torch.float64).to(device).requires_grad_()
    ref = u.detach().clone().requires_grad_()
    assert (torch.ops.kexue.dynamic_routing(u.detach(), iterations, "sabour", False, True)[2].numel() > 0) == (
        iterations == 1)
    v = dynamic_routing(u, iterations=iterations)
    vr = reference_dynamic_routing(ref, iterations=iterations)
    torch.testing.assert_close(v, vr, rtol=1e-10, atol=1e-12)
    gv = torch.randn(v.shape, generator=g, dtype=torch.float64).to(device)
    (v * gv).sum().backward()
    (vr * gv).sum().backward()
    torch.testing.assert_close(u.grad, ref.grad, rtol=1e-10, atol=1e-12)
