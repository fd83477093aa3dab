"""kexue.ops spectral normalisation: power iteration (single and grouped) against torch's
parametrization and the reference, spectral_normalize_weight gradients, registration, bad input."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

import kexue
from conftest import low_precision_ok
from kexue.ops import (
    reference_spectral_norm_power_iteration,
    reference_spectral_normalize,
    reference_spectral_normalize_weight,
    spectral_norm_power_iteration,
    spectral_norm_power_iteration_grouped,
    spectral_normalize,
    spectral_normalize_weight,
)

# Shapes covering the CPU kernel's row blocks of 4 (tails), several tasks per weight
# (300×700: 4 tasks; 2000×40: 2), empty-ish and vector-like matrices.
SHAPES = [(1, 1), (7, 5), (23, 37), (64, 576), (300, 700), (2000, 40), (3, 1000)]


def make(shape, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(shape, generator=g, dtype=torch.float64)
    u = torch.randn(shape[0], generator=g, dtype=torch.float64)
    v = torch.randn(shape[1], generator=g, dtype=torch.float64)
    u, v = u / u.norm().clamp_min(1e-12), v / v.norm().clamp_min(1e-12)
    return [t.to(device=device, dtype=dtype) for t in (W, u, v)]


def clones(*ts):
    return [t.clone() for t in ts]


def tol(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)


# ---- sigma, convergence, torch equivalence -------------------------------------------------------


@pytest.mark.parametrize("shape,seed", [((40, 30), 0), ((20, 35), 1), ((1, 9), 2), ((9, 1), 3)])
def test_converges_to_matrix_norm_random(device, shape, seed):
    W, u, v = make(shape, device=device, seed=seed)
    sv = torch.linalg.svdvals(W)
    n_iter = 100
    sigma = spectral_norm_power_iteration(W, u, v, n_iter=n_iter)
    ratio = (sv[1] / sv[0]).item() if sv.numel() > 1 else 0.0
    rtol = max(1e-10, 2 * ratio ** (2 * n_iter))
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(W, 2), rtol=rtol, atol=0)
    # u, v are the top singular pair: W v = sigma u (vectors converge at the square root rate)
    atol = max(1e-9, 4 * ratio ** n_iter) * sv[0].item()
    torch.testing.assert_close(W @ v, sigma * u, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_converges_to_matrix_norm_low_rank(device, dtype):
    g = torch.Generator().manual_seed(5)
    A = torch.linalg.qr(torch.randn(80, 3, generator=g, dtype=torch.float64))[0]
    B = torch.linalg.qr(torch.randn(50, 3, generator=g, dtype=torch.float64))[0]
    W = (A * torch.tensor([7.0, 2.0, 0.5], dtype=torch.float64)) @ B.T
    W = W.to(device=device, dtype=dtype)
    u = torch.randn(80, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    v = torch.randn(50, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    sigma = spectral_norm_power_iteration(W, u, v, n_iter=100)
    assert sigma.dtype == dtype and sigma.dim() == 0
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(W, 2), rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(23, 37), (128, 64), (300, 700)])
def test_matches_torch_parametrization_step_for_step(device, dtype, shape):
    torch.manual_seed(0)
    lin = torch.nn.Linear(shape[1], shape[0]).to(device=device, dtype=dtype)
    torch_spectral_norm(lin)
    sn_mod = lin.parametrizations.weight[0]
    W = lin.parametrizations.weight.original
    u, v = sn_mod._u.detach().clone(), sn_mod._v.detach().clone()
    g = torch.Generator().manual_seed(1)
    t = tol(dtype)
    for _ in range(4):
        lin.train()
        w_torch = lin.weight  # runs torch's power method on _u, _v, then W / sigma
        sigma_torch = torch.vdot(sn_mod._u, torch.mv(W, sn_mod._v))
        w_ours, sigma_ours = spectral_normalize(W, u, v, mode="exact")
        torch.testing.assert_close(u, sn_mod._u, **t)
        torch.testing.assert_close(v, sn_mod._v, **t)
        torch.testing.assert_close(sigma_ours, sigma_torch.detach(), **t)
        torch.testing.assert_close(w_ours, w_torch, **t)
        G = torch.randn(shape, generator=g, dtype=dtype).to(device)
        (gt,) = torch.autograd.grad(w_torch, W, G)
        (go,) = torch.autograd.grad(w_ours, W, G)
        torch.testing.assert_close(go, gt, rtol=t["rtol"] * 10, atol=t["atol"] * 10)
        # and the power iteration op alone, on the same vectors, gives torch's sigma
        u2, v2 = u.clone(), v.clone()
        sig = spectral_norm_power_iteration(W.detach(), u2, v2)
        ut, vt = u.clone(), v.clone()
        ref = reference_spectral_norm_power_iteration(W.detach(), ut, vt)
        torch.testing.assert_close(sig, ref, **t)
        torch.testing.assert_close(u2, ut, **t)
        torch.testing.assert_close(v2, vt, **t)
    # eval mode: the stored vectors, no update
    lin.eval()
    w_torch = lin.weight
    u0, v0 = u.clone(), v.clone()
    w_ours, _ = spectral_normalize(W, u, v, mode="exact", training=False)
    assert torch.equal(u, u0) and torch.equal(v, v0)
    torch.testing.assert_close(w_ours, w_torch, **t)


# ---- against the reference ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n_iter", [1, 3])
def test_power_iteration_matches_reference(device, shape, dtype, n_iter):
    W, u, v = make(shape, dtype, device)
    ur, vr = clones(u, v)
    sigma = spectral_norm_power_iteration(W, u, v, n_iter=n_iter)
    sr = reference_spectral_norm_power_iteration(W, ur, vr, n_iter=n_iter)
    assert sigma.dtype == dtype and sigma.shape == ()
    t = tol(dtype)
    torch.testing.assert_close(sigma, sr, **t)
    torch.testing.assert_close(u, ur, **t)
    torch.testing.assert_close(v, vr, **t)


@pytest.mark.parametrize("shape", [(7, 5), (300, 700)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode,coeff", [("exact", 1.0), ("soft", 0.5), ("soft", 1e4)])
def test_normalize_weight_matches_reference(device, shape, dtype, mode, coeff):
    W, u, v = make(shape, dtype, device)
    spectral_norm_power_iteration(W, u, v, n_iter=2)
    Wg, Wr = W.clone().requires_grad_(), W.clone().requires_grad_()
    out, sigma = spectral_normalize_weight(Wg, u, v, coeff=coeff, mode=mode)
    outr, sigmar = reference_spectral_normalize_weight(Wr, u, v, coeff=coeff, mode=mode)
    t = tol(dtype)
    assert out.dtype == dtype and sigma.dtype == dtype and sigma.shape == ()
    torch.testing.assert_close(out, outr, **t)
    torch.testing.assert_close(sigma, sigmar, **t)
    g = torch.Generator().manual_seed(2)
    G = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    ((out * G).sum() + 0.7 * sigma).backward()
    ((outr * G).sum() + 0.7 * sigmar).backward()
    torch.testing.assert_close(Wg.grad, Wr.grad, rtol=t["rtol"] * 10, atol=t["atol"] * 10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(device, dtype):
    shape = (96, 200)
    W, u, v = make(shape, torch.float32, device, seed=4)
    Wl, ul, vl = (t.to(dtype) for t in (W, u, v))
    hi = [t.double() for t in (Wl, ul, vl)]
    lo = clones(Wl, ul, vl)
    sigma = spectral_norm_power_iteration(Wl, ul, vl, n_iter=2)
    assert sigma.dtype == torch.float32 and ul.dtype == dtype
    s_hi = reference_spectral_norm_power_iteration(*hi, n_iter=2)
    s_lo = reference_spectral_norm_power_iteration(*lo, n_iter=2)
    for ours, ref_lo, ref_hi in ((sigma, s_lo, s_hi), (ul, lo[1], hi[1]), (vl, lo[2], hi[2])):
        ok, errs = low_precision_ok(ours, ref_lo, ref_hi)
        assert ok, errs
    # normalisation and its gradient
    for mode, coeff in (("exact", 1.0), ("soft", 0.5)):
        Wq = Wl.clone().requires_grad_()
        out, s = spectral_normalize_weight(Wq, ul, vl, coeff=coeff, mode=mode)
        assert out.dtype == dtype and s.dtype == torch.float32
        W_hi = Wl.double().requires_grad_()
        out_hi, s_hi = reference_spectral_normalize_weight(W_hi, ul.double(), vl.double(), coeff=coeff, mode=mode)
        W_lo = Wl.clone().requires_grad_()
        out_lo, s_lo = reference_spectral_normalize_weight(W_lo, ul, vl, coeff=coeff, mode=mode)
        for ours, ref_lo, ref_hi in ((out, out_lo, out_hi), (s, s_lo, s_hi)):
            ok, errs = low_precision_ok(ours, ref_lo, ref_hi)
            assert ok, errs
        G = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(device)
        for o, sg in ((out, s), (out_hi, s_hi), (out_lo, s_lo)):
            ((o.float() * G.to(o.device)).sum() + sg).backward()
        ok, errs = low_precision_ok(Wq.grad, W_lo.grad, W_hi.grad, atol=1e-2)
        assert ok, errs


# ---- grouped ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n_iter", [1, 2])
def test_grouped_equals_single(device, dtype, n_iter):
    shapes = [(64, 27), (300, 700), (1, 5), (9, 1), (64, 576), (2000, 40), (0, 4), (5, 0)]
    triples = [make(s, dtype, device, seed=i) for i, s in enumerate(shapes)]
    Ws = [t[0] for t in triples]
    us_g, vs_g = [t[1].clone() for t in triples], [t[2].clone() for t in triples]
    sig_g = spectral_norm_power_iteration_grouped(Ws, us_g, vs_g, n_iter=n_iter)
    assert sig_g.shape == (len(shapes),) and sig_g.dtype == dtype
    for i, (W, u, v) in enumerate(triples):
        s = spectral_norm_power_iteration(W, u, v, n_iter=n_iter)
        # the same kernels and the same work split per weight: bitwise equal
        assert torch.equal(sig_g[i], s), (i, sig_g[i], s)
        assert torch.equal(us_g[i], u) and torch.equal(vs_g[i], v)


def test_grouped_table_of_more_weights_than_one_upload(device):
    """The GPU uploads the weight table 32 entries per launch (as kernel parameters, so a CUDA
    graph replay rebuilds it): 70 weights take three uploads, the last one partial."""
    triples = [make((3 + i % 5, 2 + i % 7), torch.float64, device, seed=100 + i) for i in range(70)]
    us_g, vs_g = [t[1].clone() for t in triples], [t[2].clone() for t in triples]
    sig_g = spectral_norm_power_iteration_grouped([t[0] for t in triples], us_g, vs_g, n_iter=2)
    for i, (W, u, v) in enumerate(triples):
        assert torch.equal(sig_g[i], spectral_norm_power_iteration(W, u, v, n_iter=2)), i
        assert torch.equal(us_g[i], u) and torch.equal(vs_g[i], v)


def test_grouped_empty_and_errors():
    assert spectral_norm_power_iteration_grouped([], [], []).shape == (0,)
    W, u, v = make((4, 3))
    with pytest.raises(ValueError, match="same length"):
        spectral_norm_power_iteration_grouped([W, W], [u], [v])
    with pytest.raises(ValueError, match=r"us\[1\] must have shape \[4\]"):
        spectral_norm_power_iteration_grouped([W, W], [u, v], [v, v.clone()])
    with pytest.raises(RuntimeError, match=r"Ws\[1\] must have dtype Double like Ws\[0\]"):
        spectral_norm_power_iteration_grouped([W, W.float()], [u, u.float()], [v, v.float()])
    with pytest.raises(RuntimeError, match="share memory"):
        spectral_norm_power_iteration_grouped([W, W], [u, u], [v, v.clone()])


# ---- gradients, registration, compile ----------------------------------------------------------


@pytest.mark.parametrize("mode,coeff", [("exact", 1.0), ("soft", 0.3), ("soft", 50.0)])
def test_gradcheck(device, mode, coeff):
    W, u, v = make((6, 5), torch.float64, device, seed=7)
    spectral_norm_power_iteration(W, u, v, n_iter=3)  # sigma ~ 2.6: soft with coeff 0.3 scales
    W.requires_grad_()
    fn = lambda W: spectral_normalize_weight(W, u, v, coeff=coeff, mode=mode)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (W,), eps=1e-6, atol=1e-7)
    # only through sigma, only through W_sn
    assert torch.autograd.gradcheck(lambda W: fn(W)[1], (W,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda W: fn(W)[0], (W,), eps=1e-6, atol=1e-7)
    fn2 = lambda W: spectral_normalize(W, u, v, coeff=coeff, mode=mode, training=False)  # noqa: E731
    assert torch.autograd.gradcheck(fn2, (W,), eps=1e-6, atol=1e-7)


def test_saved_vectors_survive_next_power_iteration(device):
    """A discriminator called twice before backward: the first call's gradient still uses its
    own u, v (saved as copies), as with torch's parametrization."""
    W, u, v = make((12, 9), torch.float64, device)
    W.requires_grad_()
    out1, s1 = spectral_normalize(W, u, v, mode="exact")
    u1, v1 = u.clone(), v.clone()
    out2, s2 = spectral_normalize(W, u, v, mode="exact")
    assert not torch.equal(u1, u)
    (g,) = torch.autograd.grad(out1.sum() + s1, W)
    Wr = W.detach().clone().requires_grad_()
    o, s = reference_spectral_normalize_weight(Wr, u1, v1, mode="exact")
    (gr,) = torch.autograd.grad(o.sum() + s, Wr)
    torch.testing.assert_close(g, gr)


def test_version_counters_bumped():
    W, u, v = make((5, 4))
    before = (u._version, v._version)
    spectral_norm_power_iteration(W, u, v)
    assert u._version > before[0] and v._version > before[1]
    spectral_norm_power_iteration_grouped([W], [u], [v])
    assert u._version > before[0] + 1


def test_power_iteration_is_not_differentiable():
    W, u, v = make((5, 4))
    W.requires_grad_()
    sigma = spectral_norm_power_iteration(W, u, v)
    assert not sigma.requires_grad


def test_opcheck(device):
    W, u, v = make((9, 7), torch.float32, device)
    Wg = W.clone().requires_grad_()
    torch.library.opcheck(torch.ops.kexue.spectral_norm_power_iteration.default, (Wg, u, v, 2, 1e-12))
    W2, u2, v2 = make((4, 11), torch.float32, device, seed=1)
    torch.library.opcheck(torch.ops.kexue.spectral_norm_power_iteration_grouped.default,
                          ([Wg, W2.requires_grad_()], [u, u2], [v, v2], 1, 1e-12))
    for exact in (False, True):
        torch.library.opcheck(torch.ops.kexue.spectral_normalize_weight.default, (Wg, u, v, 0.5, exact))
    G = torch.randn_like(W)
    gs = torch.tensor(0.3, device=device)
    for exact in (False, True):
        torch.library.opcheck(torch.ops.kexue.spectral_normalize_weight_backward.default,
                              (G, gs, W, u, v, 0.5, exact))


def test_compile_fullgraph():
    torch._dynamo.reset()

    def layer(x, W, u, v):
        W_sn, sigma = spectral_normalize(W, u, v, coeff=0.9, mode="soft")
        return torch.tanh(x @ W_sn.t()), sigma

    W, u, v = make((6, 5), torch.float32)
    W.requires_grad_()
    x = torch.randn(3, 5)
    ur, vr = clones(u, v)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    for _ in range(2):
        y, sigma = compiled(x, W, u, v)
        (g,) = torch.autograd.grad(y.sum() + sigma, W)
        W_sn, sr = reference_spectral_normalize(W, ur, vr, coeff=0.9, mode="soft")
        yr = torch.tanh(x @ W_sn.t())
        (gr,) = torch.autograd.grad(yr.sum() + sr, W)
        torch.testing.assert_close(u, ur)  # the in-place update survives compilation
        torch.testing.assert_close(v, vr)
        torch.testing.assert_close(y, yr)
        torch.testing.assert_close(sigma, sr)
        torch.testing.assert_close(g, gr, rtol=1e-5, atol=1e-5)


# ---- layouts, edge cases, determinism ------------------------------------------------------------


def test_non_contiguous(device):
    W, u, v = make((30, 20), torch.float64, device)
    Wt = W.t().contiguous().t()  # same values, column-major
    ub = torch.zeros(60, dtype=torch.float64, device=device)
    vb = torch.zeros(40, dtype=torch.float64, device=device)
    us, vs = ub[::2], vb[1::2]
    us.copy_(u)
    vs.copy_(v)
    assert not (Wt.is_contiguous() or us.is_contiguous() or vs.is_contiguous())
    ur, vr = clones(u, v)
    sigma = spectral_norm_power_iteration(Wt, us, vs, n_iter=2)
    sr = reference_spectral_norm_power_iteration(W, ur, vr, n_iter=2)
    torch.testing.assert_close(sigma, sr)
    torch.testing.assert_close(us, ur)  # written back through the strided views
    torch.testing.assert_close(vs, vr)
    assert torch.all(ub[1::2] == 0) and torch.all(vb[::2] == 0)
    sig_g = spectral_norm_power_iteration_grouped([Wt], [us], [vs])
    assert sig_g.shape == (1,)
    Wg = Wt.detach().requires_grad_()
    out, s = spectral_normalize_weight(Wg, us, vs, mode="exact")
    outr, srr = reference_spectral_normalize_weight(W, us, vs, mode="exact")
    torch.testing.assert_close(out, outr)
    G = torch.randn(20, 30, dtype=torch.float64, device=device).t()  # non-contiguous grad
    out.backward(G)
    Wr = W.clone().requires_grad_()
    reference_spectral_normalize_weight(Wr, us, vs, mode="exact")[0].backward(G)
    torch.testing.assert_close(Wg.grad, Wr.grad)


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_empty(device, shape):
    W, u, v = make(shape, torch.float32, device)
    sigma = spectral_norm_power_iteration(W, u, v)
    assert sigma.item() == 0.0
    assert torch.all(u == 0) and torch.all(v == 0)
    Wg = W.clone().requires_grad_()
    out, s = spectral_normalize_weight(Wg, u, v, mode="soft")
    assert out.shape == shape and s.item() == 0.0
    (out.sum() + s).backward()
    assert Wg.grad.shape == shape


def test_zero_and_tiny_matrices(device):
    # W = 0: u = v = 0 and sigma = 0, like torch's F.normalize-based iteration
    W = torch.zeros(4, 3, dtype=torch.float64, device=device)
    u, v = torch.ones(4, dtype=torch.float64, device=device), torch.ones(3, dtype=torch.float64, device=device)
    ur, vr = clones(u, v)
    s = spectral_norm_power_iteration(W, u, v)
    sr = reference_spectral_norm_power_iteration(W, ur, vr)
    assert s.item() == 0.0 and sr.item() == 0.0 and torch.equal(u, ur) and torch.equal(v, vr)
    # |W^T u| < eps: sigma = |w|^2/eps, which is still u^T W v for the stored u, v
    W = 1e-14 * torch.randn(4, 3, dtype=torch.float64, device=device)
    u, v = torch.ones(4, dtype=torch.float64, device=device), torch.ones(3, dtype=torch.float64, device=device)
    ur, vr = clones(u, v)
    s = spectral_norm_power_iteration(W, u, v, eps=1e-12)
    sr = reference_spectral_norm_power_iteration(W, ur, vr, eps=1e-12)
    torch.testing.assert_close(s, sr, rtol=1e-10, atol=0)
    torch.testing.assert_close(s, u @ W @ v, rtol=1e-10, atol=0)
    torch.testing.assert_close(u, ur, rtol=1e-10, atol=0)


def test_nan_propagates(device):
    W, u, v = make((8, 6), torch.float32, device)
    W[2, 3] = float("nan")
    s = spectral_norm_power_iteration(W, u, v)
    assert s.isnan() and u.isnan().all() and v.isnan().all()


def test_deterministic_across_threads():
    W, u, v = make((1000, 300), torch.float32, seed=9)
    ua, va = clones(u, v)
    sa = spectral_norm_power_iteration(W, ua, va, n_iter=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ub, vb = clones(u, v)
        sb = spectral_norm_power_iteration(W, ub, vb, n_iter=2)
        out1 = spectral_normalize_weight(W, ua, va, mode="exact")
    finally:
        torch.set_num_threads(threads)
    out2 = spectral_normalize_weight(W, ua, va, mode="exact")
    assert torch.equal(sa, sb) and torch.equal(ua, ub) and torch.equal(va, vb)
    assert torch.equal(out1[0], out2[0]) and torch.equal(out1[1], out2[1])


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_cpu_isa_matches_reference(isa, restore_cpu_isa):
    if isa not in kexue._C.cpu_isas():
        pytest.skip(f"this CPU or build has no {isa}")
    kexue._C.set_cpu_isa(isa)
    for dtype in (torch.float32, torch.float64):
        for shape in [(7, 13), (300, 700)]:
            W, u, v = make(shape, dtype)
            ur, vr = clones(u, v)
            s = spectral_norm_power_iteration(W, u, v, n_iter=2)
            sr = reference_spectral_norm_power_iteration(W, ur, vr, n_iter=2)
            t = tol(dtype)
            torch.testing.assert_close(s, sr, **t)
            torch.testing.assert_close(u, ur, **t)
            Wg, Wr = W.clone().requires_grad_(), W.clone().requires_grad_()
            o, sg = spectral_normalize_weight(Wg, u, v, coeff=0.5)
            orr, sgr = reference_spectral_normalize_weight(Wr, u, v, coeff=0.5)
            (o.square().sum() + sg).backward()
            (orr.square().sum() + sgr).backward()
            torch.testing.assert_close(o, orr, **t)
            torch.testing.assert_close(Wg.grad, Wr.grad, rtol=t["rtol"] * 10, atol=t["atol"] * 10)


# ---- bad input -----------------------------------------------------------------------------------


def test_bad_inputs():
    W, u, v = make((4, 3), torch.float32)
    with pytest.raises(ValueError, match="W must be a 2-D matrix"):
        spectral_norm_power_iteration(W.reshape(2, 2, 3), u, v)
    with pytest.raises(ValueError, match=r"u must have shape \[4\]"):
        spectral_norm_power_iteration(W, v, v)
    with pytest.raises(ValueError, match=r"v must have shape \[3\]"):
        spectral_normalize(W, u, u)
    with pytest.raises(ValueError, match=r"n_iter must be in \[1, 100000\]"):
        spectral_norm_power_iteration(W, u, v, n_iter=0)
    with pytest.raises(ValueError, match="coeff must be a positive finite number"):
        spectral_normalize(W, u, v, coeff=0.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        spectral_normalize(W, u, v, mode="hard")
    with pytest.raises(ValueError, match="eps must be a non-negative finite number"):
        spectral_normalize(W, u, v, eps=-1.0)
    # the C++ checks, reached through torch.ops directly
    ops = torch.ops.kexue
    with pytest.raises(RuntimeError, match="u must have dtype Float like W"):
        ops.spectral_norm_power_iteration(W, u.double(), v, 1, 1e-12)
    with pytest.raises(RuntimeError, match="v must have dtype"):
        ops.spectral_normalize_weight(W, u, v.double(), 1.0, True)
    with pytest.raises(RuntimeError, match="W must be float32, float64, float16 or bfloat16"):
        ops.spectral_norm_power_iteration(W.long(), u.long(), v.long(), 1, 1e-12)
    with pytest.raises(RuntimeError, match="W must be a 2-D matrix"):
        ops.spectral_normalize_weight(W.reshape(-1), u, v, 1.0, True)
    with pytest.raises(RuntimeError, match=r"u must have shape \[4\]"):
        ops.spectral_normalize_weight(W, u[:3], v, 1.0, True)
    with pytest.raises(RuntimeError, match="n_iter must be at least 1"):
        ops.spectral_norm_power_iteration(W, u, v, 0, 1e-12)
    with pytest.raises(RuntimeError, match="coeff must be a positive number"):
        ops.spectral_normalize_weight(W, u, v, -1.0, False)
    with pytest.raises(RuntimeError, match="must not share memory with W"):
        ops.spectral_norm_power_iteration(W, W[:, 0], v, 1, 1e-12)
    with pytest.raises(RuntimeError, match="grad_out must have the shape of W"):
        ops.spectral_normalize_weight_backward(W.t(), torch.tensor(0.0), W, u, v, 1.0, True)
    with pytest.raises(RuntimeError, match="grad_sigma must be a scalar"):
        ops.spectral_normalize_weight_backward(W, torch.zeros(2), W, u, v, 1.0, True)


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and kexue.build_info()["cuda"]), reason="needs CUDA")
def test_device_mismatch():
    W, u, v = make((4, 3), torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="u must be on cuda"):
        torch.ops.kexue.spectral_norm_power_iteration(W, u.cpu(), v, 1, 1e-12)
    with pytest.raises(RuntimeError, match=r"Ws\[1\] must be on cuda"):
        spectral_norm_power_iteration_grouped([W, W.cpu()], [u, u.cpu()], [v, v.cpu()])


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and kexue.build_info()["cuda"]), reason="needs CUDA")
def test_grouped_in_a_cuda_graph_replays_its_own_table():
    """Captured once, replayed after the allocators have handed the capture's host and device
    buffers out again: the replay must still find every weight (the table is rebuilt from the
    graph's own kernel parameters)."""
    triples = [make((16 + i, 8 + i % 3), torch.float32, "cuda", seed=i) for i in range(40)]
    Ws = [t[0] for t in triples]
    u0, v0 = [t[1].clone() for t in triples], [t[2].clone() for t in triples]
    us, vs = [u.clone() for u in u0], [v.clone() for v in v0]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture
        spectral_norm_power_iteration_grouped(Ws, us, vs, n_iter=2)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sigma = spectral_norm_power_iteration_grouped(Ws, us, vs, n_iter=2)
    junk = [torch.full((4096,), 7.0).pin_memory() for _ in range(8)] + [torch.empty(1 << 20, device="cuda")]
    for u, v, a, b in zip(us, vs, u0, v0):
        u.copy_(a)
        v.copy_(b)
    graph.replay()
    torch.cuda.synchronize()
    expected = spectral_norm_power_iteration_grouped(Ws, [u.clone() for u in u0], [v.clone() for v in v0], n_iter=2)
    torch.testing.assert_close(sigma, expected)
    del junk


# ---- property test -------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(0, 40),
    cols=st.integers(0, 40),
    n_iter=st.integers(1, 3),
    coeff=st.floats(0.1, 10.0),
    exact=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes(rows, cols, n_iter, coeff, exact, seed):
    W, u, v = make((rows, cols), torch.float64, seed=seed)
    ur, vr = clones(u, v)
    s = spectral_norm_power_iteration(W, u, v, n_iter=n_iter)
    sr = reference_spectral_norm_power_iteration(W, ur, vr, n_iter=n_iter)
    torch.testing.assert_close(s, sr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(u, ur, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(v, vr, rtol=1e-12, atol=1e-12)
    mode = "exact" if exact else "soft"
    if exact and s.item() == 0.0:
        return  # W / 0
    Wg, Wr = W.clone().requires_grad_(), W.clone().requires_grad_()
    o, sg = spectral_normalize_weight(Wg, u, v, coeff=coeff, mode=mode)
    orr, sgr = reference_spectral_normalize_weight(Wr, u, v, coeff=coeff, mode=mode)
    torch.testing.assert_close(o, orr, rtol=1e-12, atol=1e-12)
    (o.sum() + sg).backward()
    (orr.sum() + sgr).backward()
    torch.testing.assert_close(Wg.grad, Wr.grad, rtol=1e-10, atol=1e-10)


def test_version_counters_bumped_in_inference_mode():
    W, u, v = make((5, 4))
    before = u._version
    with torch.inference_mode():
        spectral_norm_power_iteration(W, u, v)
    assert u._version > before
