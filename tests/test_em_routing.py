"""kexue.ops.em_routing against the paper's procedure, gradients, registration, bad input."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue.ops import em_routing, reference_em_routing


def make_inputs(B, I, J, H, dtype=torch.float64, device="cpu", seed=0, requires_grad=False,
                scale=1.0):
    g = torch.Generator().manual_seed(seed)
    V = scale * torch.randn(B, I, J, H, generator=g, dtype=torch.float64)
    a = torch.rand(B, I, generator=g, dtype=torch.float64)
    bu = 0.1 * torch.randn(J, generator=g, dtype=torch.float64)
    ba = 0.1 * torch.randn(J, generator=g, dtype=torch.float64)
    return [t.to(dtype).to(device).requires_grad_(requires_grad) for t in (V, a, bu, ba)]


@pytest.mark.parametrize("shape", [(3, 7, 4, 16), (2, 40, 10, 16), (2, 5, 3, 4), (1, 1, 5, 16),
                                   (2, 6, 1, 16)])
@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference(device, shape, iterations, dtype):
    V, a, bu, ba = make_inputs(*shape, dtype=dtype, device=device)
    # a larger final_lambda makes the activations (and so the routing) depend visibly on the cost
    for lam in (0.01, 1.0):
        mu, ao = em_routing(V, a, bu, ba, iterations, final_lambda=lam)
        mur, aor = reference_em_routing(V, a, bu, ba, iterations, final_lambda=lam)
        assert mu.shape == (shape[0], shape[2], shape[3]) and ao.shape == shape[:1] + shape[2:3]
        assert mu.dtype == dtype and ao.dtype == dtype
        tol = dict(rtol=1e-11, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mu, mur, **tol)
        torch.testing.assert_close(ao, aor, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("iterations", [1, 3])
def test_backward_matches_reference(device, dtype, iterations):
    ins = make_inputs(3, 9, 5, 16, dtype=dtype, device=device, requires_grad=True)
    refs = [t.detach().clone().requires_grad_() for t in ins]
    g = torch.Generator().manual_seed(1)
    gmu = torch.randn(3, 5, 16, generator=g, dtype=dtype).to(device)
    ga = torch.randn(3, 5, generator=g, dtype=dtype).to(device)
    mu, a = em_routing(*ins, iterations, final_lambda=0.5)
    mur, ar = reference_em_routing(*refs, iterations, final_lambda=0.5)
    gs = torch.autograd.grad((mu, a), ins, (gmu, ga))
    grs = torch.autograd.grad((mur, ar), refs, (gmu, ga))
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-4)
    for x, y in zip(gs, grs):
        torch.testing.assert_close(x, y, **tol)


def test_kept_history_gives_the_recomputed_gradients(device):
    # The backward reads the forward's history instead of recomputing the EM iterations: the
    # same numbers, bit for bit; with many iterations the history outgrows the votes and is not kept.
    V, a, bu, ba = make_inputs(3, 40, 5, 16, dtype=torch.float32, device=device)
    g = torch.Generator().manual_seed(4)
    gmu, ga = torch.randn(3, 5, 16, generator=g).to(device), torch.randn(3, 5, generator=g).to(device)
    grads = []
    for save in (True, False):
        mu, ao, state = torch.ops.kexue.em_routing(V, a, bu, ba, 3, 0.5, 1e-6, save)
        assert state.shape == ((3, 3 * (40 * 5 + 3 * 5 * 16 + 4 * 5)) if save else (0,))
        grads.append(torch.ops.kexue.em_routing_backward(gmu, ga, V, a, bu, ba, 3, 0.5, 1e-6, state if save else None))
    for x, y in zip(*grads):
        assert torch.equal(x, y)
    state = torch.ops.kexue.em_routing(V, a, bu, ba, 3, 0.5, 1e-6, True)[2]
    other = torch.ops.kexue.em_routing_backward(gmu, ga, V, a, bu, ba, 3, 0.5, 1e-6, state * 1.5)
    assert not torch.equal(other[0], grads[0][0])  # the backward does read the history
    ins = [t.clone().requires_grad_() for t in (V, a, bu, ba)]
    for x, y in zip(torch.autograd.grad(em_routing(*ins, 3, final_lambda=0.5), ins, (gmu, ga)), grads[0]):
        assert torch.equal(x, y)
    assert torch.ops.kexue.em_routing(V[:, :2], a[:, :2], bu, ba, 30, 0.5, 1e-6, True)[2].numel() == 0
    from op_cases import em_routing_backward  # the contract tests run the kept-history path too

    assert em_routing_backward(2, "cpu", torch.float32)[-1].numel() > 0


@pytest.mark.skipif(not __import__("kexue").build_info()["simt"], reason="this build has no SIMT emulator")
@pytest.mark.parametrize("forward_on", ["simt", "cpu"])
def test_history_kept_by_one_backend_read_by_the_other(forward_on):
    # The CUDA kernels (here on the emulator) and the CPU kernels keep the same history: a
    # backward on either reads what a forward on the other kept.
    from conftest import on_backend

    ins = make_inputs(2, 40, 5, 16, requires_grad=True)
    refs = [t.detach().clone().requires_grad_() for t in ins]
    g = torch.Generator().manual_seed(6)
    gmu, ga = torch.randn(2, 5, 16, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)
    with on_backend(forward_on):
        out = em_routing(*ins, 3, final_lambda=0.5)
    with on_backend("cpu" if forward_on == "simt" else "simt"):
        grads = torch.autograd.grad(out, ins, (gmu, ga))
    for x, y in zip(grads, torch.autograd.grad(reference_em_routing(*refs, 3, final_lambda=0.5), refs, (gmu, ga))):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)


def test_every_cpu_isa_matches_reference(restore_cpu_isa):
    # H = 16: one AVX-512 vector per pose; H = 5: scalar tails only.
    import kexue

    for isa in kexue._C.cpu_isas():
        kexue._C.set_cpu_isa(isa)
        for H in (16, 5):
            for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-3)):
                ins = make_inputs(2, 9, 5, H, dtype=dtype, requires_grad=True)
                refs = [t.detach().double().requires_grad_() for t in ins]
                g = torch.Generator().manual_seed(1)
                gmu, ga = torch.randn(2, 5, H, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g,
                                                                                                dtype=torch.float64)
                out = em_routing(*ins, 3, final_lambda=0.5)
                ref = reference_em_routing(*refs, 3, final_lambda=0.5)
                for x, y in zip(out, ref):
                    torch.testing.assert_close(x.double(), y, rtol=tol, atol=tol / 10, msg=lambda m: f"{isa}: {m}")
                gs = torch.autograd.grad(out, ins, (gmu.to(dtype), ga.to(dtype)))
                for x, y in zip(gs, torch.autograd.grad(ref, refs, (gmu, ga))):
                    torch.testing.assert_close(x.double(), y, rtol=tol, atol=tol / 10, msg=lambda m: f"{isa}: {m}")


@pytest.mark.parametrize("shape", [(2, 4, 3, 4), (1, 1, 3, 2), (2, 3, 1, 4)])
@pytest.mark.parametrize("iterations", [1, 3])
def test_gradcheck(device, shape, iterations):
    ins = make_inputs(*shape, device=device, requires_grad=True)
    f = lambda V, a, bu, ba: em_routing(V, a, bu, ba, iterations, final_lambda=0.7)
    assert torch.autograd.gradcheck(f, ins)


def test_gradcheck_scalar_betas(device):
    V, a, _, _ = make_inputs(2, 4, 3, 4, device=device, requires_grad=True)
    bu = torch.tensor(0.2, dtype=torch.float64, device=device, requires_grad=True)
    ba = torch.tensor(-0.1, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *x: em_routing(*x, 3, final_lambda=0.7), (V, a, bu, ba))
    mu, ao = em_routing(V, a, 0.2, -0.1)
    mur, aor = reference_em_routing(V, a, bu, ba)
    torch.testing.assert_close(mu, mur)
    torch.testing.assert_close(ao, aor)


def test_single_output_only_one_grad(device):
    ins = make_inputs(2, 5, 3, 4, device=device, requires_grad=True)
    refs = [t.detach().clone().requires_grad_() for t in ins]
    for k in (0, 1):
        g = torch.autograd.grad(em_routing(*ins)[k].sum(), ins)
        gr = torch.autograd.grad(reference_em_routing(*refs)[k].sum(), refs)
        for x, y in zip(g, gr):
            torch.testing.assert_close(x, y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("value", [0.0, 3.0, 1e6, -1e6])
def test_degenerate_equal_votes(device, dtype, value):
    V = torch.full((2, 6, 4, 16), value, dtype=dtype, device=device, requires_grad=True)
    a = torch.rand(2, 6, dtype=dtype).to(device).requires_grad_()
    bu = torch.zeros(4, dtype=dtype, device=device, requires_grad=True)
    ba = torch.zeros(4, dtype=dtype, device=device, requires_grad=True)
    mu, ao = em_routing(V, a, bu, ba, 3, final_lambda=1.0)
    assert torch.isfinite(mu).all() and torch.isfinite(ao).all()
    torch.testing.assert_close(mu, torch.full_like(mu, value))
    grads = torch.autograd.grad((mu.sum() + ao.sum()), (V, a, bu, ba))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_huge_magnitudes_and_zero_activations(device, dtype):
    V, a, bu, ba = make_inputs(2, 8, 5, 16, dtype=dtype, device=device, scale=1e6)
    for act in (a, torch.zeros_like(a)):
        ins = [t.detach().requires_grad_() for t in (V, act, bu, ba)]
        mu, ao = em_routing(*ins, 3, final_lambda=1.0)
        assert torch.isfinite(mu).all() and torch.isfinite(ao).all()
        grads = torch.autograd.grad(mu.sum() + ao.sum(), ins)
        assert all(torch.isfinite(g).all() for g in grads)
    mur, aor = reference_em_routing(V, a, bu, ba, 3, final_lambda=1.0)
    if dtype == torch.float64:
        mu, ao = em_routing(V, a, bu, ba, 3, final_lambda=1.0)
        torch.testing.assert_close(mu, mur, rtol=1e-9, atol=1e-6)
        torch.testing.assert_close(ao, aor, rtol=1e-9, atol=1e-9)


def test_deterministic(device):
    ins = make_inputs(6, 20, 5, 16, dtype=torch.float32, device=device, requires_grad=True)
    out1 = em_routing(*ins)
    g1 = torch.autograd.grad(out1[0].sum() + out1[1].sum(), ins)
    out2 = em_routing(*ins)
    g2 = torch.autograd.grad(out2[0].sum() + out2[1].sum(), ins)
    for x, y in zip(out1 + g1, out2 + g2):
        assert torch.equal(x, y)


@pytest.mark.parametrize("shape,iterations", [((2100, 3, 2, 2), 3), ((2100, 12, 2, 2), 1), ((2, 5, 20, 16), 3),
                                              ((2, 30, 10, 4), 3), ((2, 3, 2, 0), 3)])
def test_work_beyond_one_pass_of_the_block(device, shape, iterations):
    """The GPU runs a block per sample, its threads striding over pose entries, votes and
    capsules: 2100 samples make blocks stride over the batch (reusing their workspace slice),
    20 capsules × 16 entries give each thread more than one pose entry, 30 × 10 more than one
    vote; an empty pose leaves no pose entry at all. With one iteration of 12 inputs the history
    is kept, so blocks also stride over the batch reading a kept state."""
    ins = make_inputs(*shape, device=device, requires_grad=True)
    refs = [t.detach().clone().requires_grad_() for t in ins]
    kept = torch.ops.kexue.em_routing(*(t.detach() for t in ins), iterations, 0.5, 1e-6, True)[2].numel() > 0
    assert kept == (shape == (2100, 12, 2, 2))
    out = em_routing(*ins, iterations, final_lambda=0.5)
    ref = reference_em_routing(*refs, iterations, final_lambda=0.5)
    for x, y in zip(out, ref):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    g = torch.Generator().manual_seed(2)
    cot = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(device) for t in out]
    for x, y in zip(torch.autograd.grad(out, ins, cot), torch.autograd.grad(ref, refs, cot)):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)


def test_empty_batch(device):
    V, a, bu, ba = make_inputs(0, 3, 2, 4, device=device)
    mu, ao = em_routing(V, a, bu, ba)
    assert mu.shape == (0, 2, 4) and ao.shape == (0, 2)


def test_opcheck(device):
    V, a, bu, ba = make_inputs(2, 5, 3, 4, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.kexue.em_routing.default, (V, a, bu, ba, 3, 0.5, 1e-6))
    g = torch.randn(2, 3, 4, dtype=torch.float64, device=device)
    ga = torch.randn(2, 3, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.kexue.em_routing_backward.default,
                          (g, ga, V.detach(), a.detach(), bu.detach(), ba.detach(), 3, 0.5, 1e-6))


def test_compile_fullgraph():
    ins = make_inputs(2, 5, 3, 16, requires_grad=True)
    fn = torch.compile(lambda V, a, bu, ba: em_routing(V, a, bu, ba, 3, final_lambda=0.3),
                       fullgraph=True, backend="aot_eager")
    mu, ao = fn(*ins)
    mur, aor = em_routing(*ins, 3, final_lambda=0.3)
    torch.testing.assert_close(mu, mur)
    torch.testing.assert_close(ao, aor)
    g = torch.autograd.grad(mu.sum() + ao.sum(), ins)
    gr = torch.autograd.grad(mur.sum() + aor.sum(), ins)
    for x, y in zip(g, gr):
        torch.testing.assert_close(x, y)


def test_bad_inputs():
    V, a, bu, ba = make_inputs(2, 5, 3, 16)
    with pytest.raises(ValueError, match=r"votes must have shape \[B, N_in, N_out, H\]"):
        em_routing(V[0], a, bu, ba)
    with pytest.raises(ValueError, match=r"iterations must be in \[1, 1000\]"):
        em_routing(V, a, bu, ba, 0)
    with pytest.raises(ValueError, match=r"a_in must have shape \[B, N_in\]"):
        em_routing(V, a[:, :4], bu, ba)
    with pytest.raises(ValueError, match=r"a_in must have shape \[B, N_in\]"):
        em_routing(V, a.unsqueeze(-1), bu, ba)
    with pytest.raises(ValueError, match=r"beta_u must be a scalar or have shape \[N_out\]"):
        em_routing(V, a, bu[:2], ba)
    with pytest.raises(ValueError, match=r"beta_a must be a scalar or have shape \[N_out\]"):
        em_routing(V, a, bu, ba.reshape(1, 3))
    with pytest.raises(ValueError, match="does not match pose_dim = 9"):
        em_routing(V, a, bu, ba, pose_dim=9)
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        em_routing(V, a, bu, ba, eps=0.0)
    # the raw op checks too
    op = torch.ops.kexue.em_routing
    with pytest.raises(RuntimeError, match=r"votes must have shape \[B, N_in, N_out, H\]"):
        op(V[0], a, bu, ba, 3, 0.01, 1e-6)
    with pytest.raises(RuntimeError, match="iterations must be >= 1"):
        op(V, a, bu, ba, 0, 0.01, 1e-6)
    with pytest.raises(RuntimeError, match="beta_a must have shape"):
        op(V, a, bu, ba[:2], 3, 0.01, 1e-6)
    with pytest.raises(RuntimeError, match="a_in must have dtype"):
        op(V, a.float(), bu, ba, 3, 0.01, 1e-6)
    with pytest.raises(RuntimeError, match="votes must be float32 or float64"):
        op(V.half(), a.half(), bu.half(), ba.half(), 3, 0.01, 1e-6)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), I=st.integers(1, 12), J=st.integers(1, 8), H=st.integers(1, 17),
       iterations=st.integers(1, 4), lam=st.sampled_from([0.01, 0.5, 2.0]),
       seed=st.integers(0, 2**16))
def test_hypothesis_shapes(B, I, J, H, iterations, lam, seed):
    ins = make_inputs(B, I, J, H, seed=seed, requires_grad=True)
    refs = [t.detach().clone().requires_grad_() for t in ins]
    mu, ao = em_routing(*ins, iterations, final_lambda=lam)
    mur, aor = reference_em_routing(*refs, iterations, final_lambda=lam)
    torch.testing.assert_close(mu, mur, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ao, aor, rtol=1e-9, atol=1e-10)
    g = torch.autograd.grad(mu.sum() + ao.sum(), ins)
    gr = torch.autograd.grad(mur.sum() + aor.sum(), refs)
    for x, y in zip(g, gr):
        torch.testing.assert_close(x, y, rtol=1e-7, atol=1e-8)
