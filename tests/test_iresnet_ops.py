"""kexue.ops.logdet_power_series and iresnet_mlp_logdet against their references."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue.ops import (
    iresnet_mlp_logdet, logdet_power_series, reference_iresnet_mlp_logdet, reference_logdet_power_series,
)
from kexue.ops.iresnet import ACTIVATIONS


def contractive(b, d, dtype=torch.float64, scale=0.6, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(b, d, d, generator=g, dtype=dtype)
    return (scale * J / torch.linalg.matrix_norm(J, 2)[:, None, None]).to(device)


@pytest.mark.parametrize("d", [1, 2, 7, 16, 64])
@pytest.mark.parametrize("n", [1, 2, 5, 10, 11])
def test_series_matches_reference(device, d, n):
    J = contractive(5, d, device=device)
    torch.testing.assert_close(logdet_power_series(J, n), reference_logdet_power_series(J, n), rtol=1e-10, atol=1e-10)


def test_series_converges_to_slogdet():
    J = contractive(4, 8, scale=0.5)
    exact = torch.linalg.slogdet(torch.eye(8, dtype=torch.float64) + J)[1]
    torch.testing.assert_close(logdet_power_series(J, 60), exact, rtol=1e-12, atol=1e-12)
    # the truncation error is bounded by the tail of the series: sum_{k>n} D·ρ^k/k
    err = (logdet_power_series(J, 10) - exact).abs().max().item()
    assert err <= 8 * 0.5 ** 11 / 11 / (1 - 0.5)


@pytest.mark.parametrize("n", [1, 4, 9])
def test_series_gradcheck(device, n):
    J = contractive(3, 4, device=device).requires_grad_()
    assert torch.autograd.gradcheck(lambda J: logdet_power_series(J, n), (J,))


def test_series_float32_and_bad_input():
    J = contractive(3, 5, torch.float32)
    out = logdet_power_series(J, 8)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference_logdet_power_series(J.double(), 8).float(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="n_terms must be"):
        logdet_power_series(J, 0)
    with pytest.raises(RuntimeError, match=r"square matrices \[B, D, D\]"):
        logdet_power_series(torch.randn(3, 4, 5), 3)
    with pytest.raises(RuntimeError, match="must be float32"):
        logdet_power_series(torch.ones(2, 3, 3, dtype=torch.int64), 3)


def mlp(b=6, d=3, h=8, dtype=torch.float64, seed=0, device="cpu", requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(h, d, generator=g, dtype=dtype) * 0.4
    W2 = torch.randn(d, h, generator=g, dtype=dtype) * 0.4
    t = [torch.randn(b, d, generator=g, dtype=dtype), W1, torch.randn(h, generator=g, dtype=dtype),
         W2, torch.randn(d, generator=g, dtype=dtype), torch.randn(b, d, generator=g, dtype=dtype)]
    return [x.to(device).requires_grad_(requires_grad and i < 5) for i, x in enumerate(t)]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("n", [1, 3, 10])
@pytest.mark.parametrize("d", [3, 12])  # both strategies: explicit J when D <= n, products otherwise
def test_mlp_matches_reference(device, activation, n, d):
    args = mlp(d=d, device=device)
    torch.testing.assert_close(iresnet_mlp_logdet(*args, n, activation),
                               reference_iresnet_mlp_logdet(*args, n, activation), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("d", [3, 12])
def test_mlp_backward_matches_reference(device, activation, d):
    ours = mlp(d=d, device=device, requires_grad=True)
    ref = [t.detach().clone().requires_grad_(t.requires_grad) for t in ours]
    w = torch.randn(6, dtype=torch.float64, device=device)
    (iresnet_mlp_logdet(*ours, 6, activation) * w).sum().backward()
    (reference_iresnet_mlp_logdet(*ref, 6, activation) * w).sum().backward()
    for a, b in zip(ours[:4], ref[:4]):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-10)


def test_mlp_kept_products_give_the_recomputed_gradients():
    # The backward reads the forward's J^l v, W1 J^l v, act' and act'' instead of recomputing them;
    # the explicit-Jacobian path (D <= n) keeps nothing.
    x, W1, b1, W2, b2, v = mlp(d=12)
    g = torch.randn(6, dtype=torch.float64)
    out, state = torch.ops.kexue.iresnet_mlp_logdet(x, W1, b1, W2, b2, v, 6, "elu", True)
    assert state.shape == (6 * 6 * (12 + 8) + 2 * 6 * 8,)
    out2, empty = torch.ops.kexue.iresnet_mlp_logdet(x, W1, b1, W2, b2, v, 6, "elu", False)
    assert empty.numel() == 0
    torch.testing.assert_close(out, out2, rtol=1e-13, atol=1e-13)
    kept = torch.ops.kexue.iresnet_mlp_logdet_backward(g, x, W1, b1, W2, v, 6, "elu", [True] * 4, state)
    recomputed = torch.ops.kexue.iresnet_mlp_logdet_backward(g, x, W1, b1, W2, v, 6, "elu", [True] * 4, None)
    for a, b in zip(kept, recomputed):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    assert torch.ops.kexue.iresnet_mlp_logdet(*mlp(d=3), 6, "elu", True)[1].numel() == 0


@pytest.mark.parametrize("activation", ["elu", "lipswish"])
@pytest.mark.parametrize("d", [2, 9])
def test_mlp_gradcheck(activation, d):
    args = mlp(b=3, d=d, h=4, requires_grad=True)
    fn = lambda x, W1, b1, W2: iresnet_mlp_logdet(x, W1, b1, W2, args[4], args[5], 4, activation)
    assert torch.autograd.gradcheck(fn, tuple(args[:4]))


def test_mlp_hutchinson_is_unbiased_for_the_series():
    """E_v[v^T J^k v] = tr(J^k): averaging over many probes reaches the exact-trace series
    within a few standard errors (fixed seed)."""
    torch.manual_seed(0)
    x, W1, b1, W2, b2, _ = mlp(b=1, d=4, h=16)
    x = x.expand(20000, 4)
    v = torch.randn(20000, 4, dtype=torch.float64)
    est = iresnet_mlp_logdet(x, W1, b1, W2, b2, v, 8, "elu")
    h = x[:1] @ W1.t() + b1
    d1 = torch.where(h > 0, torch.ones_like(h), torch.exp(h))
    J = (W2 * d1) @ W1
    exact = logdet_power_series(J[None], 8)
    assert abs(est.mean() - exact).item() < 4 * est.std().item() / 20000 ** 0.5


def test_mlp_opcheck_and_bad_input():
    args = mlp(requires_grad=True)
    torch.library.opcheck(torch.ops.kexue.iresnet_mlp_logdet.default, (*args, 3, "lipswish"))
    torch.library.opcheck(torch.ops.kexue.logdet_power_series.default, (contractive(2, 3).requires_grad_(), 4))
    x, W1, b1, W2, b2, v = [a.detach() for a in args]
    torch.library.opcheck(torch.ops.kexue.iresnet_mlp_logdet_backward.default,
                          (torch.randn(6, dtype=torch.float64), x, W1, b1, W2, v, 3, "elu", [True, True, False, True]))
    with pytest.raises(ValueError, match="activation must be"):
        iresnet_mlp_logdet(x, W1, b1, W2, b2, v, 3, "relu")
    with pytest.raises(RuntimeError, match=r"W1 must be \[H, 3\]"):
        iresnet_mlp_logdet(x, W1[:, :2], b1, W2, b2, v, 3, "elu")
    with pytest.raises(RuntimeError, match="v must have the shape of x"):
        iresnet_mlp_logdet(x, W1, b1, W2, b2, v[:2], 3, "elu")


def test_compile_fullgraph():
    torch._dynamo.reset()
    args = mlp(dtype=torch.float32, requires_grad=True)
    f = torch.compile(lambda *a: iresnet_mlp_logdet(*a, 5, "lipswish").sum() + logdet_power_series(
        torch.einsum("bd,be->bde", a[0], a[5]) * 0.1, 3).sum(), fullgraph=True, backend="aot_eager")
    f(*args).backward()
    assert args[1].grad is not None


@settings(max_examples=25, deadline=None)
@given(b=st.integers(0, 5), d=st.integers(1, 6), h=st.integers(1, 9), n=st.integers(1, 7), seed=st.integers(0, 99))
def test_property_shapes(b, d, h, n, seed):
    args = mlp(b, d, h, seed=seed)
    torch.testing.assert_close(iresnet_mlp_logdet(*args, n, "tanh"), reference_iresnet_mlp_logdet(*args, n, "tanh"),
                               rtol=1e-9, atol=1e-10)
