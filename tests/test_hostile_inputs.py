"""Hostile input: each case once found to crash the process, return uninitialised memory, hide a
NaN, half-apply an in-place update, accept a nonsensical scalar or drop a gradient, now a
regression test; and every op refuses an argument on the meta device among CPU tensors (the
dispatcher sends such calls to the fake kernel, which must not return garbage)."""
import subprocess
import sys
import textwrap

import pytest
import torch

from kexue.nn import RoPE
from kexue.ops import attention as A
from kexue.ops import (actnorm, coupling, dynamic_routing, em_routing, iresnet_mlp_logdet, logdet_power_series,
                       spectral_norm_power_iteration, spectral_norm_power_iteration_grouped)

from op_cases import CASES


def _runs_in_a_subprocess(code):
    """Runs `code`; a crash (signal) is a failure with its output, not a dead test runner."""
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"exit {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res.stdout


# ---- crashes ------------------------------------------------------------------------------------

def test_empty_batches_and_no_keys_do_not_crash():
    out = _runs_in_a_subprocess("""
        import torch, kexue
        from kexue.nn import RoPE
        from kexue.ops import attention as A
        x = torch.randn(0, 2, 5, 4)
        assert A.apply_rope(x, None, RoPE(4)).shape == x.shape
        q = torch.randn(1, 2, 3, 4, requires_grad=True)
        k = torch.randn(1, 1, 0, 4, requires_grad=True)
        v = torch.randn(1, 1, 0, 4, requires_grad=True)
        out = A.rope_attention(q, k, v)
        gq, gk, gv = torch.autograd.grad(out.sum(), (q, k, v))
        assert (out == 0).all() and (gq == 0).all() and gk.shape == k.shape and gv.shape == v.shape
        print("ok")
    """)
    assert out.strip() == "ok"


# ---- arguments on the meta device among real ones ------------------------------------------------

def _meta_variants(args):
    """args with one tensor (or one tensor of a list) moved to the meta device, per variant."""
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            yield f"arg {i}", args[:i] + [a.detach().to("meta")] + args[i + 1:]
        elif isinstance(a, list) and a and isinstance(a[0], torch.Tensor):
            moved = [a[0].detach().to("meta")] + a[1:]
            yield f"arg {i}[0]", args[:i] + [moved] + args[i + 1:]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_an_argument_on_meta_is_refused(case):
    for label, args in _meta_variants(case.build(2, "cpu", case.dtypes[0])):
        if all(not isinstance(a, torch.Tensor) or a.device.type == "meta" for a in args):
            continue  # every tensor on meta: shape propagation, which must work
        with pytest.raises(RuntimeError, match="must be|must have"):
            case.op(*args)
            pytest.fail(f"{case.name} accepted {label} on meta")


def test_all_meta_propagates_shapes():
    for case in CASES:
        args = [a.detach().to("meta") if isinstance(a, torch.Tensor) else a
                for a in case.build(2, "cpu", case.dtypes[0])]
        args = [[t.detach().to("meta") for t in a] if isinstance(a, list) and a and isinstance(a[0], torch.Tensor)
                else a for a in args]
        out = case.op(*args)
        assert all(t.device.type == "meta" for t in (out if isinstance(out, (tuple, list)) else [out])), case.name


# ---- hidden NaNs ---------------------------------------------------------------------------------

def test_a_nan_query_gives_a_nan_row_not_a_masked_one(device):
    q, k, v = (torch.randn(1, 2, 7, 8, device=device) for _ in range(3))
    q[0, 1, 3, 0] = float("nan")
    out = A.rope_attention(q, k, v, rope=RoPE(8), causal=True)
    assert out[0, 1, 3].isnan().all() and torch.isfinite(out[0, 0]).all()
    assert torch.isfinite(out[0, 1, [0, 1, 2, 4, 5, 6]]).all()


def test_nan_scalars_are_refused():
    q, k, v = (torch.randn(1, 2, 7, 8) for _ in range(3))
    inv, _, inter = RoPE(8).kernel_args(7, "cpu")
    with pytest.raises(RuntimeError, match="rope_scale must be positive and finite"):
        torch.ops.kexue.rope_attention(q, k, v, inv, float("nan"), inter, None, False, None, "unilm", None, None, 0.3)
    with pytest.raises(RuntimeError, match="scale must be positive and finite"):
        torch.ops.kexue.rope_attention(q, k, v, None, 1.0, False, None, False, None, "unilm", None, None, float("inf"))


# ---- scalars and integer arguments ----------------------------------------------------------------

def test_nonsensical_scalars_are_refused():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="clamp must be a positive finite number"):
        coupling(x, x, x, scale="tanh", clamp=float("inf"))
    with pytest.raises(RuntimeError, match="clamp must be finite"):
        torch.ops.kexue.coupling(x, x, x, None, "tanh", False, float("inf"))
    V, a = torch.randn(2, 5, 3, 4), torch.rand(2, 5)
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        em_routing(V, a, 0.1, 0.1, eps=float("inf"))
    with pytest.raises(ValueError, match="final_lambda must be a non-negative finite number"):
        em_routing(V, a, 0.1, 0.1, final_lambda=float("nan"))
    with pytest.raises(RuntimeError, match="final_lambda must be non-negative and finite"):
        torch.ops.kexue.em_routing(V, a, torch.zeros(3), torch.zeros(3), 3, float("nan"), 1e-6)


@pytest.mark.parametrize("bad", [2.5, "3", None, True])
def test_integer_arguments_must_be_integers(bad):
    u = torch.randn(2, 5, 3, 4)
    with pytest.raises(TypeError, match="iterations must be an integer"):
        dynamic_routing(u, bad)
    with pytest.raises(TypeError, match="iterations must be an integer"):
        em_routing(u, torch.rand(2, 5), 0.1, 0.1, bad)
    W, vu, vv = torch.randn(4, 3), torch.randn(4), torch.randn(3)
    with pytest.raises(TypeError, match="n_iter must be an integer"):
        spectral_norm_power_iteration(W, vu, vv, n_iter=bad)
    with pytest.raises(TypeError, match="n_terms must be an integer"):
        logdet_power_series(torch.zeros(2, 3, 3), bad)


def test_huge_term_counts_are_refused_clearly():
    with pytest.raises(ValueError, match=r"n_terms must be in \[1, 1024\]"):
        logdet_power_series(torch.zeros(2, 3, 3), 2**62)
    with pytest.raises(RuntimeError, match=r"n_terms must be in \[1, 1024\]"):
        torch.ops.kexue.logdet_power_series(torch.zeros(2, 3, 3), 2**62)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="n_terms must be in"):
        iresnet_mlp_logdet(x, torch.randn(4, 3), torch.randn(4), torch.randn(3, 4), torch.randn(3), x, 2**40)


def test_bool_lengths_and_positions_are_refused():
    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    with pytest.raises(TypeError, match="key_lengths must be an integer tensor"):
        A.rope_attention(q, k, v, key_lengths=torch.tensor([True, False]))
    with pytest.raises(RuntimeError, match="key_lengths must be integers, got Bool"):
        torch.ops.kexue.rope_attention(q, k, v, None, 1.0, False, None, False, None, "unilm",
                                       torch.tensor([True, False]), None, 0.5)
    with pytest.raises(TypeError, match="positions must be integer or real"):
        A.apply_rope(q, torch.ones(2, 5, dtype=torch.bool), RoPE(4))


def test_head_dim_zero_is_a_clear_error():
    q = torch.randn(1, 2, 5, 0)
    with pytest.raises(ValueError, match="head dimension must be at least 1"):
        A.rope_attention(q, q, q)


# ---- in-place updates ----------------------------------------------------------------------------

def test_power_iteration_checks_everything_before_writing():
    W = torch.randn(4, 3)
    u, v0 = torch.randn(4), torch.randn(1)
    v = v0.expand(3)  # stride 0: cannot be written element by element
    before = u.clone()
    with pytest.raises(RuntimeError, match="v is updated in place and must not have internally overlapping memory"):
        torch.ops.kexue.spectral_norm_power_iteration(W, u, v, 1, 1e-12)
    assert torch.equal(u, before)  # u untouched: the check came first
    us, vs = [torch.randn(4), torch.randn(2)], [torch.randn(3), v0.expand(5)]
    with pytest.raises(RuntimeError, match=r"vs\[1\] is updated in place"):
        spectral_norm_power_iteration_grouped([W, torch.randn(2, 5)], us, vs)


def test_power_iteration_refuses_vectors_autograd_records():
    W, v = torch.randn(4, 3), torch.randn(3)
    u = torch.randn(4, requires_grad=True)
    with pytest.raises(RuntimeError, match="u requires grad and is updated in place"):
        spectral_norm_power_iteration(W, u, v)
    with torch.no_grad():  # the way torch's spectral_norm runs it
        spectral_norm_power_iteration(W, u, v)


# ---- gradients -----------------------------------------------------------------------------------

def test_positions_are_not_differentiable():
    q = torch.randn(1, 2, 5, 4)
    pos = torch.arange(5.0, requires_grad=True)
    with pytest.raises(ValueError, match="positions are not differentiable"):
        A.rope_attention(q, q, q, rope=RoPE(4), positions=pos)
    with pytest.raises(ValueError, match="positions are not differentiable"):
        A.apply_rope(q, pos, RoPE(4))


def test_actnorm_and_coupling_keep_gradients_for_every_input():
    x, s, t = (torch.randn(3, 4, 2, 2, requires_grad=True) for _ in range(3))
    b, ls = torch.zeros(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    y, ld = coupling(x, s, t)
    z, ld2 = actnorm(y, b, ls)
    grads = torch.autograd.grad(z.sum() + ld.sum() + ld2.sum(), (x, s, t, b, ls))
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_diffusion_scalars_and_schedules_refuse_nan_and_inf():
    from kexue.ops import ddim_step, ddpm_step, q_sample

    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="alpha_bar must be in"):
        q_sample(x, x, torch.tensor([0.5, float("nan"), 0.5], dtype=torch.float64))
    ac = torch.linspace(0.99, 0.1, 10, dtype=torch.float64)
    ac[4] = float("nan")
    with pytest.raises(RuntimeError, match="alphas_cumprod must lie in"):
        ddpm_step(x, x, 3, ac)
    with pytest.raises(RuntimeError, match="eta must be >= 0 and finite"):
        ddim_step(x, x, 0.5, 0.6, eta=float("inf"), generator=torch.Generator())
    with pytest.raises(RuntimeError, match="clip_x0 must be positive and finite"):
        ddim_step(x, x, 0.5, 0.6, clip_x0=float("inf"))


def test_iteration_counts_are_bounded():
    u = torch.randn(2, 5, 3, 4)
    with pytest.raises(ValueError, match=r"iterations must be in \[1, 1000\]"):
        dynamic_routing(u, 2**40)
    with pytest.raises(RuntimeError, match="iterations must be at most 1000"):
        torch.ops.kexue.dynamic_routing(u, 2**40, "sabour", False)
    with pytest.raises(RuntimeError, match="iterations must be at most 1000"):
        torch.ops.kexue.em_routing(u, torch.rand(2, 5), torch.zeros(3), torch.zeros(3), 2**40, 0.01, 1e-6)
    with pytest.raises(RuntimeError, match="n_iter must be at most 100000"):
        torch.ops.kexue.spectral_norm_power_iteration(torch.randn(4, 3), torch.randn(4), torch.randn(3), 2**40, 1e-12)
