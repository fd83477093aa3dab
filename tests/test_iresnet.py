"""Invertible residual blocks and the i-ResNet / Residual Flow models."""
import io

import pytest
import torch

from kexue.models.flows import IResNet, ResidualFlow
from kexue.nn.iresnet import InvertibleResidualMLP, ResidualFlowMLP


def trained_block(dim=4, steps=20, **kw):
    torch.manual_seed(0)
    block = InvertibleResidualMLP(dim, hidden=32, **kw)
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    for _ in range(steps):  # push the weights around; the spectral bound must keep holding
        x = torch.randn(64, dim)
        y, ld = block(x)
        loss = -(ld + (-0.5 * y.square().sum(1))).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return block


@pytest.mark.parametrize("activation", ["elu", "lipswish"])
def test_lipschitz_bound_holds_after_training(activation):
    block = trained_block(activation=activation, coeff=0.7)
    block.eval()
    for _ in range(50):  # converge the power iteration to measure the true norms
        block.train()
        block._weights()
    block.eval()
    W1, _, W2, _ = block._weights()
    n1, n2 = torch.linalg.matrix_norm(W1, 2).item(), torch.linalg.matrix_norm(W2, 2).item()
    assert n1 <= 0.7 + 1e-3 and n2 <= 0.7 + 1e-3


def test_inverse_by_fixed_point():
    block = trained_block().eval()
    x = torch.randn(100, 4)
    y, ld = block(x)
    x2, ld_inv = block.inverse(y)
    assert (x2 - x).abs().max() < 1e-4
    info = block.last_inverse
    assert info["residual"] < 1e-6 and 1 <= info["iterations"] < 200
    torch.testing.assert_close(ld, -ld_inv, rtol=1e-4, atol=1e-4)


def test_exact_series_matches_slogdet():
    block = trained_block(n_terms=60).double().eval()
    x = torch.randn(10, 4, dtype=torch.float64)
    _, ld = block(x)
    J = torch.autograd.functional.jacobian(lambda v: block(v[None])[0][0], x[0])
    torch.testing.assert_close(ld[0], torch.linalg.slogdet(J)[1], rtol=1e-8, atol=1e-8)


def test_hutchinson_mode_mean_matches_exact():
    torch.manual_seed(1)
    block = trained_block(dim=4, logdet="hutchinson").double().eval()
    exact = InvertibleResidualMLP(4, hidden=32, logdet="exact").double().eval()
    exact.load_state_dict(block.state_dict())
    x = torch.randn(1, 4, dtype=torch.float64).expand(20000, 4)
    est = block(x)[1]
    ref = exact(x[:1])[1]
    assert abs(est.mean() - ref).item() < 4 * est.std().item() / 20000 ** 0.5


def test_residual_flow_block_is_unbiased():
    torch.manual_seed(0)
    block = ResidualFlowMLP(3, hidden=16, n_exact=1, roulette_p=0.5, n_terms=40, logdet="exact").double()
    x = torch.randn(1, 3, dtype=torch.float64)
    with torch.no_grad():
        target = block.eval()(x)[1]
        block.train()
        draws = torch.stack([block(x.expand(500, 3))[1] for _ in range(40)]).flatten()
    assert abs(draws.mean() - target).item() < 4 * draws.std().item() / draws.numel() ** 0.5


def test_residual_flow_gradient_is_unbiased():
    """The Neumann-series gradient, averaged, equals the gradient of the exact log-det."""
    torch.manual_seed(0)
    block = ResidualFlowMLP(2, hidden=8, n_exact=4, roulette_p=0.3, n_terms=60, logdet="exact").double()
    x = torch.randn(1, 2, dtype=torch.float64)
    w = block.lin2.parametrizations.weight.original
    block.eval()
    (g_exact,) = torch.autograd.grad(block(x)[1].sum(), w)
    block.train()
    grads = []
    for _ in range(200):
        (g,) = torch.autograd.grad(block(x.expand(200, 2))[1].mean(), w)
        grads.append(g)
    g_mean = torch.stack(grads).mean(0)
    assert (g_mean - g_exact).abs().max() < 0.05 * g_exact.abs().max() + 1e-3


@pytest.mark.parametrize("cls", [IResNet, ResidualFlow])
def test_model_trains_on_toy_and_round_trips(cls):
    """Beyond the Gaussian that ActNorm's data init already fits, a small stack needs a few
    hundred steps on the moons (ELU here: LipSwish's gentle slope at 0 learns more slowly)."""
    from kexue.data import toy_2d

    torch.manual_seed(0)
    kw = dict(n_blocks=8, hidden=64, coeff=0.97, activation="elu")
    model = cls((2,), **kw)
    data = toy_2d("moons", 4096)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def held_out():  # eval mode: truncated series, not the noisy training estimator
        model.eval()
        with torch.no_grad():
            value = model.loss(data[-1024:])["loss"].item()
        model.train()
        return value

    model.loss(data[:256])  # ActNorm's data init: the Gaussian fit to beat
    start = held_out()
    for step in range(300):
        loss = model.loss(data[torch.randint(0, 3072, (256,))])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = held_out()
    assert end < start - 0.1, (start, end)
    model.eval()
    z, _ = model.flow(data[:50])
    assert (model.flow.inverse(z) - data[:50]).abs().max() < 1e-4
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fresh = cls((2,), **kw)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    fresh.eval()
    torch.testing.assert_close(fresh.log_prob(data[:20]), model.log_prob(data[:20]))
    s1 = model.sample(5, generator=torch.Generator().manual_seed(2))
    s2 = model.sample(5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(s1, s2)


def test_bad_inputs():
    with pytest.raises(ValueError, match="coeff must be in"):
        InvertibleResidualMLP(3, coeff=1.2)
    with pytest.raises(ValueError, match="activation must be"):
        InvertibleResidualMLP(3, activation="relu")
    with pytest.raises(ValueError, match="logdet must be"):
        InvertibleResidualMLP(3, logdet="slogdet")
    with pytest.raises(ValueError, match="roulette_p"):
        ResidualFlowMLP(3, roulette_p=1.5)


def test_conv_block_inverse_logdet_and_training():
    from kexue.nn.iresnet import InvertibleResidualConv
    from test_flow_layers import jacobian_logdet

    torch.manual_seed(0)
    block = InvertibleResidualConv((2, 4, 4), hidden=8, n_terms=30).double()
    with torch.no_grad():
        for p in block.parameters():
            p.mul_(3)  # large raw weights: the operator-norm bound must still make g contractive
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    block.eval()
    y, ld = block(x)
    x2, _ = block.inverse(y)
    assert (x2 - x).abs().max() < 1e-4 and block.last_inverse["residual"] < 1e-6
    # many Hutchinson probes: the estimate's mean is the exact log-det (30 terms: negligible tail)
    exact = jacobian_logdet(lambda v: block(v)[0], x[:1])
    draws = torch.stack([block(x[:1].expand(400, 2, 4, 4))[1] for _ in range(5)]).flatten()
    assert abs(draws.mean() - exact).item() < 4 * draws.std().item() / draws.numel() ** 0.5 + 1e-6


def test_conv_iresnet_on_digits_trains():
    from kexue.data import load_digits

    x, _ = load_digits("train")
    torch.manual_seed(0)
    model = IResNet((1, 8, 8), 17, n_blocks=2, hidden=16, n_terms=3, block="conv")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = model.loss(x[torch.randint(0, len(x), (32,))])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05
    with pytest.raises(ValueError, match="block must be"):
        IResNet((2,), block="resnet")


def test_blocks_take_an_empty_batch():
    from kexue.nn import InvertibleResidualMLP, ResidualFlowMLP
    from kexue.nn.iresnet import InvertibleResidualConv

    for block, shape in ((InvertibleResidualMLP(3, hidden=8, logdet="exact"), (0, 3)),
                         (InvertibleResidualMLP(3, hidden=8, logdet="hutchinson"), (0, 3)),
                         (ResidualFlowMLP(3, hidden=8), (0, 3)),
                         (InvertibleResidualConv((2, 4, 4), hidden=4), (0, 2, 4, 4))):
        for mode in (block.train, block.eval):
            mode()
            y, ld = block(torch.randn(shape))
            assert y.shape == shape and ld.shape == (0,)
