"""GANs: the f-divergence table, the one-loss gradient separation, the WGAN-GP and QP losses
against their formulas, short training runs, sampling, reconstruction, checkpoints, bad input."""
import io
import math

import pytest
import torch
from torch import nn

from kexue.models.gan import (
    DIVERGENCES, FGAN, GANQP, SNGAN, WGANGP, BiGANQP, get_divergence, mmd2, pair_distance, qp_critic_loss,
)
from kexue.models.gan.fit import fit

NAMES = list(DIVERGENCES)


# ---- the f-divergence table ----------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_fenchel_young_equality_and_convexity(name):
    d = get_divergence(name)
    u = torch.logspace(-1.5, 1.5, 301, dtype=torch.float64)
    torch.testing.assert_close(d.conjugate(d.f_prime(u)), u * d.f_prime(u) - d.f(u), rtol=1e-9, atol=1e-9)
    one = torch.ones(1, dtype=torch.float64)
    torch.testing.assert_close(d.f(one), torch.full_like(one, d.f_at_one))
    # f' is the derivative of f, and f is convex (non-decreasing slopes on a grid)
    h = 1e-6
    torch.testing.assert_close(d.f_prime(u), (d.f(u + h) - d.f(u - h)) / (2 * h), rtol=1e-5, atol=1e-6)
    f = d.f(u)
    slopes = (f[1:] - f[:-1]) / (u[1:] - u[:-1])
    assert (slopes[1:] - slopes[:-1] >= -1e-9).all()


@pytest.mark.parametrize("name", NAMES)
def test_activation_maps_reals_into_conjugate_domain(name):
    d = get_divergence(name)
    v = torch.linspace(-30, 30, 601, dtype=torch.float64)
    t = d.activation(v)
    low, high = d.conjugate_domain
    assert torch.isfinite(t).all() and (t > low).all() and (t < high).all()
    mid = torch.linspace(-6, 6, 121, dtype=torch.float64)
    torch.testing.assert_close(d.conjugate_of_activation(mid), d.conjugate(d.activation(mid)), rtol=1e-9, atol=1e-9)
    # the stable closed form stays finite where composing the two would overflow
    assert torch.isfinite(d.conjugate_of_activation(torch.tensor([-20.0, 20.0], dtype=torch.float64))).all()


@pytest.mark.parametrize("name", NAMES)
def test_bound_is_tight_at_the_optimal_critic_discrete(name):
    d = get_divergence(name)
    g = torch.Generator().manual_seed(0)
    p = torch.rand(7, generator=g, dtype=torch.float64) + 0.1
    q = torch.rand(7, generator=g, dtype=torch.float64) + 0.1
    p, q = p / p.sum(), q / q.sum()
    t_star = d.f_prime(p / q)

    def exact_bound(t):  # E_P[T] − E_Q[f*(T)] as exact sums
        return (p * t).sum() - (q * d.conjugate(t)).sum()

    torch.testing.assert_close(exact_bound(t_star), d.divergence(p, q), rtol=1e-10, atol=1e-12)
    # any other critic gives less (Fenchel's inequality), e.g. a perturbed one inside the domain
    low, high = d.conjugate_domain
    for delta in (-0.2, 0.1):
        t = t_star + delta
        if high < math.inf:
            t = torch.minimum(t, torch.full_like(t, high - 1e-3))
        assert exact_bound(t) < d.divergence(p, q)


@pytest.mark.parametrize("name", NAMES)
def test_bound_with_optimal_critic_equals_divergence_gaussians(name):
    """P = N(0, 1), Q = N(0.5, 1): the Monte Carlo bound at T* = f'(p/q) matches D_f(P‖Q) from
    quadrature, and bound_from_logits agrees with bound."""
    d = get_divergence(name)
    mu = 0.5

    def ratio(x):  # p(x)/q(x)
        return torch.exp(-0.5 * x.square() + 0.5 * (x - mu).square())

    grid = torch.linspace(-12, 12, 200001, dtype=torch.float64)
    q_density = torch.exp(-0.5 * (grid - mu).square()) / math.sqrt(2 * math.pi)
    exact = torch.trapezoid(q_density * d.f(ratio(grid)), grid)
    g = torch.Generator().manual_seed(1)
    n = 400_000
    xp = torch.randn(n, generator=g, dtype=torch.float64)
    xq = torch.randn(n, generator=g, dtype=torch.float64) + mu
    t_p, t_q = d.f_prime(ratio(xp)), d.f_prime(ratio(xq))
    estimate = d.bound(t_p, t_q)
    scale = (t_p.std() + d.conjugate(t_q).std()) / math.sqrt(n)
    assert abs(estimate - exact) < 5 * scale + 1e-6, (float(estimate), float(exact))
    v = torch.randn(50, generator=g, dtype=torch.float64)
    w = torch.randn(60, generator=g, dtype=torch.float64)
    torch.testing.assert_close(d.bound_from_logits(v, w), d.bound(d.activation(v), d.activation(w)))


def test_unknown_divergence_name():
    with pytest.raises(ValueError, match="unknown f-divergence 'tv'"):
        get_divergence("tv")
    with pytest.raises(ValueError, match="unknown f-divergence"):
        FGAN((2,), divergence="wasserstein")


# ---- models --------------------------------------------------------------------------------------

def small(kind, image=False):
    shape, levels = ((1, 8, 8), 17) if image else ((2,), None)
    kw = dict(latent_dim=4, hidden=16)
    return {
        "fgan": lambda: FGAN(shape, levels, divergence="js", **kw),
        "fgan_kl_bound": lambda: FGAN(shape, levels, divergence="kl", generator_objective="bound", **kw),
        "sngan": lambda: SNGAN(shape, levels, **kw),
        "sngan_ns": lambda: SNGAN(shape, levels, objective="nonsaturating", **kw),
        "wgangp": lambda: WGANGP(shape, levels, **kw),
        "ganqp": lambda: GANQP(shape, levels, **kw),
        "biganqp": lambda: BiGANQP(shape, levels, **kw),
    }[kind]()


def batch(model, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    if model.n_levels:
        return torch.randint(0, model.n_levels, (n, *model.event_shape), generator=g, dtype=torch.uint8)
    return torch.randn(n, *model.event_shape, generator=g)


def grads(loss, params):
    return [g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True), params)]


KINDS = ["fgan", "fgan_kl_bound", "sngan", "sngan_ns", "wgangp", "ganqp", "biganqp"]


@pytest.mark.parametrize("image", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_one_loss_gives_each_player_its_own_gradient(kind, image):
    torch.manual_seed(0)
    model = small(kind, image)
    x = batch(model)
    critic = list(model.critic.parameters())
    players = [p for n, p in model.named_parameters() if not n.startswith("critic.")]
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def run(fn):  # same weights, buffers (spectral-norm vectors, batch-norm stats) and randomness
        model.load_state_dict(state)
        torch.manual_seed(7)
        return fn()

    total = run(lambda: model.loss(x, generator=torch.Generator().manual_seed(3))["loss"])
    g_total_critic, g_total_players = grads(total, critic), grads(total, players)

    def parts():
        real = model.to_model_space(x)
        z = model.draw_latent(real.shape[0], torch.Generator().manual_seed(3))
        if kind == "biganqp":
            z_enc = model.encoder(real)
            fake = model.generator(z)
            d = model.critic_loss((real, z_enc.detach()), (fake.detach(), z))
            rec_z, rec_x = model.reconstruction_losses(real, z_enc, fake, z)
            g = model.generator_loss((real, z_enc), (fake, z)) + model.latent_weight * rec_z \
                + model.pixel_weight * rec_x
            return d, g
        fake = model.generator(z)
        return model.critic_loss(real, fake.detach()), model.generator_loss(real, fake)

    loss_d, _ = run(parts)
    g_critic = grads(loss_d, critic)
    _, loss_g = run(parts)
    g_players = grads(loss_g, players)
    for a, b in zip(g_total_critic, g_critic):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(g_total_players, g_players):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in g_players) and any(g.abs().sum() > 0 for g in g_critic)


class LinearCritic(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)

    def forward(self, x):
        return x.flatten(1) @ self.w + self.b


def test_wgangp_critic_loss_on_a_linear_critic():
    """∇V = w everywhere, so the penalty is λ(‖w‖ − 1)² whatever the interpolates."""
    model = WGANGP((3,), gp_weight=10.0, latent_dim=2, hidden=8).double()
    w = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    model.critic = LinearCritic(w, torch.tensor(0.7, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    real = torch.randn(9, 3, generator=g, dtype=torch.float64)
    fake = torch.randn(9, 3, generator=g, dtype=torch.float64)
    expected = (fake @ w).mean() - (real @ w).mean() + 10.0 * (w.norm() - 1) ** 2
    torch.testing.assert_close(model.critic_loss(real, fake), expected)
    torch.testing.assert_close(model.generator_loss(real, fake), -(fake @ w + 0.7).mean())
    torch.testing.assert_close(model.critic_metrics(real, fake)["wasserstein"], (real @ w).mean() - (fake @ w).mean())


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_ganqp_losses_equal_the_formula(distance):
    model = GANQP((2, 2, 2), lam=10.0, distance=distance, latent_dim=2, hidden=8).double()
    w = torch.linspace(-1, 1, 8, dtype=torch.float64)
    model.critic = LinearCritic(w, torch.tensor(0.1, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    real = torch.randn(6, 2, 2, 2, generator=g, dtype=torch.float64)
    fake = torch.randn(6, 2, 2, 2, generator=g, dtype=torch.float64)
    delta = real.flatten(1) @ w - fake.flatten(1) @ w
    diff = (real - fake).flatten(1)
    dist = diff.abs().mean(1) if distance == "l1" else diff.square().mean(1).sqrt()
    torch.testing.assert_close(pair_distance(real, fake, distance), dist)
    expected = -(delta - delta ** 2 / (2 * 10.0 * dist)).mean()
    torch.testing.assert_close(model.critic_loss(real, fake), expected)
    torch.testing.assert_close(model.generator_loss(real, fake), delta.mean())
    # the critic's optimum per pair is Δ = λ·d, where the objective is λd/2
    torch.testing.assert_close(qp_critic_loss(10.0 * dist, torch.zeros_like(dist), dist, 10.0), -(5.0 * dist).mean())


def test_biganqp_critic_distance_adds_x_and_z_parts():
    model = BiGANQP((4,), lam=2.0, latent_dim=3, hidden=8).double()
    g = torch.Generator().manual_seed(0)
    x, xg = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    ze, z = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    s = model.critic(torch.cat([x, xg]), torch.cat([ze, z]))
    delta = s[:5] - s[5:]
    dist = (x - xg).abs().mean(1) + (ze - z).abs().mean(1)
    torch.testing.assert_close(model.critic_loss((x, ze), (xg, z)), (delta ** 2 / (2 * 2.0 * dist) - delta).mean())


def _mmd_to_data(model, data, seed=5):
    model.eval()
    with torch.no_grad():
        real = model.to_model_space(data)
        fake = model.generator(model.draw_latent(len(data), torch.Generator().manual_seed(seed)))
        out = float(mmd2(real, fake))
    model.train()
    return out


@pytest.mark.parametrize("kind,data_name,steps,lr", [
    ("fgan", "8gaussians", 300, 1e-3),
    ("ganqp", "digits", 150, 1e-3),
    ("wgangp", "digits", 150, 1e-3),
    ("sngan", "digits", 150, 1e-3),
    ("biganqp", "digits", 150, 1e-3),
])
def test_training_moves_samples_toward_the_data(kind, data_name, steps, lr):
    from kexue.data import get_dataset

    train, test = get_dataset(data_name, "train", n=2000 if data_name != "digits" else None), \
        get_dataset(data_name, "test", n=500 if data_name != "digits" else None)
    torch.manual_seed(0)
    cls = {"fgan": FGAN, "ganqp": GANQP, "wgangp": WGANGP, "sngan": SNGAN, "biganqp": BiGANQP}[kind]
    model = cls(train.event_shape, train.n_levels, hidden=64)
    before = _mmd_to_data(model, test.x)
    history = fit(model, train.x, steps, batch_size=64, lr=lr, seed=0)
    after = _mmd_to_data(model, test.x)
    assert all(math.isfinite(h["loss"]) for h in history)
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_shapes_seed_and_state_dict(kind):
    torch.manual_seed(0)
    model = small(kind, image=True)
    fit(model, batch(model, 64).float(), 3, batch_size=16, seed=0)  # move batch-norm stats off their init
    a = model.sample(5, generator=torch.Generator().manual_seed(1))
    b = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert a.shape == (5, 1, 8, 8) and torch.equal(a, b)
    assert torch.equal(a, a.round()) and a.min() >= 0 and a.max() <= 16  # digit levels
    assert model.sample(0).shape == (0, 1, 8, 8)
    assert torch.equal(model.sample(3, temperature=0.0)[0], model.sample(3, temperature=0.0)[2])
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    torch.manual_seed(123)
    fresh = small(kind, image=True)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert torch.equal(fresh.sample(5, generator=torch.Generator().manual_seed(1)), a)
    fresh.eval()
    model.eval()
    x = batch(model, 8)
    for k, v in model.evaluate(x, generator=torch.Generator().manual_seed(2)).items():
        torch.testing.assert_close(fresh.evaluate(x, generator=torch.Generator().manual_seed(2))[k], v)


def test_sample_leaves_batch_norm_statistics_alone():
    model = small("fgan")
    before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    model.train()
    model.sample(10)
    assert model.generator.training
    for k, v in model.generator.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_biganqp_encode_and_reconstruct():
    torch.manual_seed(0)
    model = small("biganqp", image=True).eval()
    x = batch(model, 6)
    assert model.encode(x).shape == (6, 4)
    r = model.reconstruct(x)
    assert r.shape == x.shape and r.dtype == torch.float32 and r.min() >= 0 and r.max() <= 16
    with pytest.raises(ValueError, match=r"expected a batch \[B, 1, 8, 8\]"):
        model.reconstruct(torch.zeros(2, 8, 8))


def test_registry_entries():
    from kexue.data import get_dataset
    from kexue.train.registry import get

    toy = get_dataset("8gaussians", "train", n=100)
    assert get("fgan").default_data == "8gaussians"
    model = get("fgan").build(toy, divergence="kl")
    assert isinstance(model, FGAN) and model.divergence.name == "kl"
    digits = get_dataset("digits", "train", n=100)
    for name, cls in (("sngan", SNGAN), ("wgangp", WGANGP), ("ganqp", GANQP), ("biganqp", BiGANQP)):
        entry = get(name)
        model = entry.build(digits)
        assert isinstance(model, cls) and model.sample(2).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown f-divergence"):
        get("fgan").build(toy, divergence="nope")


def test_bad_input():
    with pytest.raises(ValueError, match="generator_objective"):
        FGAN((2,), generator_objective="minimax")
    with pytest.raises(ValueError, match="r1_weight"):
        FGAN((2,), r1_weight=-1.0)
    with pytest.raises(ValueError, match="objective must be one of hinge, nonsaturating"):
        SNGAN((2,), objective="wasserstein")
    with pytest.raises(ValueError, match="gp_weight"):
        WGANGP((2,), gp_weight=-1)
    with pytest.raises(ValueError, match="distance must be one of l1, l2"):
        GANQP((2,), distance="cosine")
    with pytest.raises(ValueError, match="lam must be positive"):
        BiGANQP((2,), lam=0.0)
    with pytest.raises(ValueError, match="event_shape"):
        GANQP((2, 3))
    with pytest.raises(ValueError, match="n_levels"):
        GANQP((1, 8, 8), n_levels=1)
    with pytest.raises(ValueError, match="latent_dim"):
        WGANGP((2,), latent_dim=0)
    model = small("ganqp")
    with pytest.raises(ValueError, match=r"expected a batch \[B, 2\]"):
        model.loss(torch.zeros(4, 3))
    with pytest.raises(TypeError, match="expected a tensor"):
        model.loss([[0.0, 1.0]])
    with pytest.raises(ValueError, match="n must be a non-negative integer"):
        model.sample(-1)
    with pytest.raises(ValueError, match="at least 2 examples"):
        model.loss(torch.zeros(1, 2))
    assert model.eval().evaluate(torch.zeros(1, 2))["mmd"] >= 0  # one example is fine outside training
    assert model.sample(1).shape == (1, 2)
    with pytest.raises(ValueError, match="equally shaped"):
        mmd2(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="kind must be one of"):
        pair_distance(torch.zeros(2, 2), torch.zeros(2, 2), "linf")
    with pytest.raises(ValueError, match="batch_size"):
        fit(model, torch.zeros(4, 2), 1, batch_size=8)
