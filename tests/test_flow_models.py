"""Flow models: exact inverses, log-dets against autograd Jacobians, training, sampling,
checkpoints, bad input."""
import io

import pytest
import torch

from kexue.models.flows import FVAE, BertFlow, Glow, NICE, RealNVP
from test_flow_layers import jacobian_logdet, randomize

# (constructor, event shape) of small continuous-data models: every model and both data kinds
SMALL = {
    "nice": (lambda s: NICE(s, hidden=16, depth=2), (8,)),
    "nice_img": (lambda s: NICE(s, hidden=16, depth=2, prior="normal"), (1, 4, 4)),
    "realnvp_vec": (lambda s: RealNVP(s, hidden=16, n_couplings=4), (4,)),
    "realnvp_img": (lambda s: RealNVP(s, hidden=8), (1, 4, 4)),
    "glow_vec": (lambda s: Glow(s, levels=2, depth=2, hidden=8), (8,)),
    "glow_img": (lambda s: Glow(s, levels=2, depth=2, hidden=8), (1, 4, 4)),
    "glow_img_additive_shuffle": (lambda s: Glow(s, levels=2, depth=2, hidden=8, coupling="additive", permutation="shuffle"), (1, 4, 4)),
    "bertflow": (lambda s: BertFlow(s, levels=2, depth=2, hidden=8), (8,)),
}


def build(name, dtype=torch.float64, perturb=True):
    make, shape = SMALL[name]
    torch.manual_seed(0)
    model = make(shape)
    model.train()
    model(torch.randn(16, *shape))  # data-dependent ActNorm init
    model = model.to(dtype)
    # deep stacks amplify a large perturbation into ill-conditioned maps; 0.1 is plenty
    return (randomize(model, scale=0.1) if perturb else model).eval(), shape


@pytest.mark.parametrize("name", list(SMALL))
def test_inverse_and_logdet(name):
    model, shape = build(name)
    x = torch.randn(3, *shape, dtype=torch.float64).clamp(-2, 2)
    if name == "nice_img":
        x = x.abs()
    z, ld = model.flow(x)
    x2, ld_inv = model.flow.inverse_with_logdet(z)
    assert (x2 - x).abs().max() < 1e-10
    torch.testing.assert_close(ld + ld_inv, torch.zeros_like(ld), atol=1e-9, rtol=0)
    torch.testing.assert_close(ld, jacobian_logdet(lambda v: model.flow(v)[0], x), atol=1e-7, rtol=1e-7)
    # fp32, at a realistic operating point (initialised on data, small perturbation)
    m32, _ = build(name, torch.float32, perturb=False)
    with torch.no_grad():
        for p in m32.parameters():
            p.add_(0.05 * torch.randn_like(p))
    z32, _ = m32.flow(x.float())
    assert (m32.flow.inverse(z32) - x.float()).abs().max() < 1e-5


def test_discrete_round_trip_through_dequantization():
    model = Glow((1, 8, 8), n_levels=17, levels=2, depth=2, hidden=8).eval()
    x = torch.randint(0, 17, (4, 1, 8, 8), dtype=torch.uint8)
    z, _ = model.flow(x)
    assert torch.equal(model.flow.inverse(z), x.float())


@pytest.mark.parametrize("name", ["nice", "realnvp_vec", "glow_img", "bertflow"])
def test_seeded_sampling_and_state_dict(name):
    model, shape = build(name, torch.float32)
    a = model.sample(6, generator=torch.Generator().manual_seed(1))
    b = model.sample(6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (6, *shape)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    torch.manual_seed(123)
    fresh = SMALL[name][0](shape)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    fresh.eval()
    x = torch.randn(5, *shape).abs()
    torch.testing.assert_close(fresh.log_prob(x), model.log_prob(x))
    # a loaded model is not re-initialised by its first training-mode batch
    fresh.train()
    fresh.log_prob(10 + x)
    fresh.eval()
    torch.testing.assert_close(fresh.log_prob(x), model.log_prob(x))


def _train(model, data, steps, lr=3e-3, batch=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, data.shape[0], (batch,), generator=g)
        loss = model.loss(data[idx])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("cls,kw", [
    (NICE, dict(hidden=64, depth=2)),
    (RealNVP, dict(hidden=16, n_scales=2)),
    (Glow, dict(levels=2, depth=2, hidden=16)),
    (FVAE, dict(hidden=16, blocks=2, depth=2)),
    (FVAE, dict(hidden=16, blocks=2, posterior="gaussian")),
])
def test_loss_falls_on_digits(cls, kw):
    from kexue.data import load_digits

    x, _ = load_digits("train")
    torch.manual_seed(0)
    model = cls((1, 8, 8), 17, **kw)
    losses = _train(model, x, 40)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.1, (first, last)


def test_realnvp_2d_toy_loss_falls():
    from kexue.data import toy_2d

    x = toy_2d("moons", 4000)
    torch.manual_seed(0)
    model = RealNVP((2,), hidden=32, n_couplings=4)
    losses = _train(model, x, 60, lr=5e-3, batch=256)
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5 - 0.2


def test_fvae_sampling_and_bound():
    torch.manual_seed(0)
    model = FVAE((1, 8, 8), 17, hidden=8, blocks=1, depth=1)
    s = model.sample(3, temperature=0.8, generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, 1, 8, 8) and s.min() >= 0 and s.max() <= 16
    x = torch.randint(0, 17, (5, 1, 8, 8), dtype=torch.uint8)
    terms = model.negative_elbo(x)
    assert terms["bound"].shape == (5,) and torch.isfinite(terms["bound"]).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match="even"):
        Glow((5,), levels=1, depth=1)
    with pytest.raises(ValueError, match="height and width must be even"):
        Glow((1, 6, 5), levels=1, depth=1)
    with pytest.raises(ValueError, match="coupling must be"):
        Glow((4,), levels=1, depth=1, coupling="spline")
    model = Glow((4,), levels=1, depth=1)
    with pytest.raises(ValueError, match="NaN"):
        model.loss(torch.tensor([[0.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="expects images"):
        FVAE((4,))
    with pytest.raises(ValueError, match="embedding vectors"):
        BertFlow((1, 4, 4))


def test_fused_and_reference_ops_train_identically():
    """The same model on the fused ops and on the plain-PyTorch references follows the same loss
    curve (what the training-step benchmark compares must be the same computation)."""
    from kexue.bench.flow_models import loss_curves
    from kexue.data import load_digits

    x, _ = load_digits("train")
    ours, ref = loss_curves(lambda: Glow((1, 8, 8), 17, levels=2, depth=2, hidden=16), x, steps=12, batch=32)
    assert max(abs(a - b) for a, b in zip(ours, ref)) < 1e-3, (ours, ref)
    assert ours[-1] < ours[0]
