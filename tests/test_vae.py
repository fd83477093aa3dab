"""Gaussian VAE, BN-VAE, vMF-VAE and the importance-sampled likelihood: closed forms against Monte
Carlo, training, the BN-VAE KL bound, seeded sampling, checkpoints, bad input."""
import io
import math

import pytest
import torch

from kexue.data import get_dataset
from kexue.distributions import DiagonalNormal
from kexue.models.vae.bnvae import BNVAE
from kexue.models.vae.likelihood import log_likelihood
from kexue.models.vae.observations import make_observation
from kexue.models.vae.vae import VAE
from kexue.models.vae.vmf import VMFVAE

SMALL = {"hidden": 64, "layers": 1, "latent_dim": 4}
MODELS = {
    "vae": lambda **kw: VAE((1, 8, 8), 17, **{**SMALL, **kw}),
    "bnvae": lambda **kw: BNVAE((1, 8, 8), 17, **{**SMALL, **kw}),
    "vmfvae": lambda **kw: VMFVAE((1, 8, 8), 17, **{**SMALL, "kappa": 20.0, **kw}),
}


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits", "train").x, get_dataset("digits", "test").x[:64]


def train_steps(model, x, steps, seed=0, batch=64):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    losses, outs = [], []
    for _ in range(steps):
        out = model.loss(x[torch.randint(0, len(x), (batch,), generator=g)])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
        outs.append({k: float(v.detach()) for k, v in out.items()})
    return losses, outs


@pytest.fixture(scope="module")
def trained(digits):
    """Each model after 80 steps on the digits (shared by the tests that need a trained model)."""
    x, _ = digits
    res = {}
    for name, make in MODELS.items():
        torch.manual_seed(0)
        model = make()
        losses, outs = train_steps(model, x, 80)
        res[name] = (model.eval(), losses, outs)
    return res


# ---------------------------------------------------------------------------------------------
def test_gaussian_kl_closed_form_matches_monte_carlo():
    torch.manual_seed(0)
    q = DiagonalNormal(torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64))
    z = q.sample((200000,), generator=torch.Generator().manual_seed(1))
    prior = -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1)
    mc = (q.log_prob(z) - prior).mean(0)
    se = (q.log_prob(z) - prior).std(0) / math.sqrt(z.shape[0])
    assert ((mc - q.kl_to_standard_normal()).abs() <= 5 * se).all()
    ref = torch.distributions.Independent(torch.distributions.Normal(q.loc, q.stddev), 1)
    torch.testing.assert_close(q.log_prob(z[:10]), ref.log_prob(z[:10]))
    torch.testing.assert_close(q.entropy(), ref.entropy())


def test_observation_models_are_normalised():
    obs = make_observation(None, 3, 5)  # categorical over 5 levels, 3 pixels
    params = torch.randn(2, obs.param_size)
    levels = torch.cartesian_prod(*[torch.arange(5)] * 3)  # every image
    total = torch.stack([obs.log_prob(params[i:i + 1].expand(len(levels), -1), levels).exp().sum() for i in range(2)])
    torch.testing.assert_close(total, torch.ones(2))
    bern = make_observation("bernoulli", 3, 17)
    p = torch.randn(4, 3)
    x = torch.randint(0, 2, (4, 3)) * 16  # black/white pixels: the Bernoulli is then a true pmf
    ref = torch.distributions.Bernoulli(logits=p).log_prob(x / 16).sum(-1)
    torch.testing.assert_close(bern.log_prob(p, x), ref)
    gauss = make_observation("gaussian", 3, None, sigma=0.3)
    xf = torch.randn(4, 3)
    torch.testing.assert_close(gauss.log_prob(p, xf), torch.distributions.Normal(p, 0.3).log_prob(xf).sum(-1))
    assert dict(make_observation("gaussian", 3, None).named_parameters())  # learned σ is a parameter
    with pytest.raises(ValueError, match="decoder must be one of"):
        make_observation("poisson", 3, 17)
    with pytest.raises(ValueError, match="needs discrete data"):
        make_observation("categorical", 3, None)


@pytest.mark.parametrize("name", list(MODELS))
def test_training_loss_falls(trained, name):
    _, losses, _ = trained[name]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10


def test_bnvae_kl_stays_above_its_bound(trained, digits):
    _, _, outs = trained["bnvae"]
    for out in outs:  # every training batch, from initialisation on
        assert out["kl"] >= out["kl_bound"] - 1e-3
        assert out["kl_bound"] >= -0.5 * SMALL["latent_dim"] * math.log(1 - 0.5) - 1e-6
    # the identity behind it: over a training batch E[μ²] + E[σ²] = 1 per dimension
    model = MODELS["bnvae"]().train()
    with torch.no_grad():
        q = model.encode(digits[0][:128])
    second = (q.loc.square() + q.variance).mean(0)
    torch.testing.assert_close(second, torch.ones_like(second), atol=1e-3, rtol=0)
    # τ is the floor: a collapsed (θ → −∞) BN-VAE keeps KL ≥ −½·L·log(1 − τ)
    strict = MODELS["bnvae"](tau=0.9)
    with torch.no_grad():
        strict.bn_latent.theta.fill_(-30.0)
    assert strict.kl_lower_bound().item() == pytest.approx(strict.guaranteed_kl(), rel=1e-6)
    assert strict.train().loss(digits[0][:64])["kl"].item() >= strict.guaranteed_kl() - 1e-3


def test_beta_weights_the_kl():
    torch.manual_seed(0)
    model = MODELS["vae"](beta=0.25)
    x = torch.randint(0, 17, (8, 1, 8, 8), dtype=torch.uint8)
    torch.manual_seed(1)
    out = model.loss(x)
    torch.manual_seed(1)
    terms = model.negative_elbo(x)
    torch.testing.assert_close(out["loss"], (terms["recon"] + 0.25 * terms["kl"]).mean())
    torch.testing.assert_close(out["nelbo"], (terms["recon"] + terms["kl"]).mean())


@pytest.mark.parametrize("name", list(MODELS))
def test_k1_importance_estimate_is_the_elbo_in_expectation(trained, digits, name):
    """The mean of log p(x|z) + log p(z) − log q(z|x) over z ~ q equals −(recon + KL) with the
    closed-form KL: for the vMF-VAE this checks its log-density and KL (Bessel functions)
    against each other."""
    model = trained[name][0]
    x = digits[1][:4]
    k = 4000
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        w = model.importance_terms(x, k, generator=g)  # [k, B]
        q = model.encode(x)
        z = q.rsample((k,), generator=g)  # fresh draws for the reconstruction term
        xk = x.unsqueeze(0).expand(k, *x.shape).flatten(0, 1)
        log_px = model.observation.log_prob(model.decoder_params(z.flatten(0, 1)), xk).view(k, -1)
        elbo = log_px.mean(0) - model.kl(q)
    se = torch.sqrt(w.var(0) / k + log_px.var(0) / k)
    assert ((w.mean(0) - elbo).abs() <= 5 * se + 1e-6).all(), (w.mean(0), elbo, se)


@pytest.mark.parametrize("name", list(MODELS))
def test_importance_sampled_likelihood_tightens_with_k(trained, digits, name):
    model = trained[name][0]
    x = digits[1]
    ll = [log_likelihood(model, x, k, batch_size=32, k_batch=50, generator=torch.Generator().manual_seed(k)).mean().item()
          for k in (1, 10, 100)]
    assert ll[0] < ll[1] < ll[2] < 0, ll
    again = log_likelihood(model, x, 10, batch_size=32, k_batch=50, generator=torch.Generator().manual_seed(10))
    assert again.mean().item() == ll[1] and again.shape == (len(x),)
    assert not model.training  # the mode is restored (the fixture's model is in eval mode)


@pytest.mark.parametrize("name", list(MODELS))
def test_shapes_sampling_and_state_dict(name, digits):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = digits[1][:5]
    q = model.encode(x)
    assert q.mean.shape == (5, 4) and model.decode(q.mean).shape == (5, 1, 8, 8)
    a = model.sample(6, generator=torch.Generator().manual_seed(1))
    b = model.sample(6, generator=torch.Generator().manual_seed(1))
    c = model.sample(6, generator=torch.Generator().manual_seed(2))
    assert a.shape == (6, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, a.round()) and a.min() >= 0 and a.max() <= 16
    noisy = model.sample(3, generator=torch.Generator().manual_seed(1), decoder_noise=True)
    assert noisy.shape == (3, 1, 8, 8) and torch.equal(noisy, noisy.round())
    assert model.sample(0).shape == (0, 1, 8, 8)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    torch.manual_seed(99)
    fresh = MODELS[name](**({"kappa": 5.0} if name == "vmfvae" else {}))
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    fresh.eval()
    if name == "vmfvae":
        assert fresh.kappa.item() == 20.0  # κ travels with the checkpoint
    t1 = model.importance_terms(x, 3, generator=torch.Generator().manual_seed(4))
    t2 = fresh.importance_terms(x, 3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(t1, t2)


def test_vmfvae_latent_and_constant_kl(digits):
    torch.manual_seed(0)
    model = MODELS["vmfvae"]()
    q = model.encode(digits[1][:7])
    torch.testing.assert_close(q.loc.norm(dim=-1), torch.ones(7))
    kl = model.kl(q)
    assert kl.shape == (7,) and torch.allclose(kl, model.kl_constant().expand(7))
    z = model.sample_prior(5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(5))


def test_latent_maps(tmp_path, digits):
    from kexue.models.vae.figures import save_latent_map

    for name in ("vae", "vmfvae"):
        torch.manual_seed(0)
        model = MODELS[name](latent_dim=2)
        images, z = model.latent_map(5)
        assert images.shape == (25, 1, 8, 8) and z.shape == (25, 2)
        if name == "vae":  # prior quantiles: symmetric grid, top-left = (min z₁, max z₂)
            assert z[0, 0] == -z[-1, 0] and z[0, 1] == -z[-1, 1] and z[0, 0] < 0 < z[0, 1]
        else:  # a walk around the circle
            torch.testing.assert_close(z.norm(dim=-1), torch.ones(25))
        save_latent_map(model, tmp_path / f"{name}.png", n=5, x=digits[1][:20],
                        labels=torch.arange(20) % 10)
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    with pytest.raises(ValueError, match="latent_dim=2"):
        MODELS["vae"]().latent_map(5)


def test_registered_and_trainable_through_kexue_train(tmp_path):
    from kexue.train import registry, train

    data = get_dataset("digits", "train", n=128)
    for name in ("vae", "bnvae", "vmfvae"):
        model = registry.get(name).build(data, hidden=32, layers=1, latent_dim=3)
        assert isinstance(model, {"vae": VAE, "bnvae": BNVAE, "vmfvae": VMFVAE}[name])
    res = train("vmfvae", data, steps=4, batch_size=32, out_dir=tmp_path / "run", progress=False,
                model_kwargs={"hidden": 32, "layers": 1, "latent_dim": 3})
    assert math.isfinite(res["test"]["nelbo"]) and (tmp_path / "run" / "samples.png").exists()


def test_bad_input(digits):
    model = MODELS["vae"]()
    with pytest.raises(ValueError, match=r"expected a batch of shape \[B, 1, 8, 8\]"):
        model.loss(torch.zeros(4, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="levels 0..16"):
        model.loss(torch.full((2, 1, 8, 8), 17, dtype=torch.uint8))
    with pytest.raises(ValueError, match="integer levels"):
        model.loss(torch.full((2, 1, 8, 8), 0.5))
    with pytest.raises(TypeError, match="tensor batch"):
        model.loss([[0]])
    with pytest.raises(ValueError, match="latents must have shape"):
        model.decode(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="k must be"):
        model.importance_terms(digits[1][:2], 0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        log_likelihood(model, digits[1][:2], 0)
    with pytest.raises(ValueError, match="batch_size must be"):
        log_likelihood(model, digits[1][:2], 1, batch_size=0)
    with pytest.raises(ValueError, match="non-empty batch"):
        log_likelihood(model, digits[1][:0], 1)
    with pytest.raises(TypeError, match="importance_terms"):
        log_likelihood(torch.nn.Linear(2, 2), digits[1][:2], 1)
    with pytest.raises(ValueError, match="latent_dim must be an integer >= 1"):
        VAE((1, 8, 8), 17, latent_dim=0)
    with pytest.raises(ValueError, match="beta must be"):
        VAE((1, 8, 8), 17, beta=-1.0)
    with pytest.raises(ValueError, match="sigma is the Gaussian decoder's"):
        VAE((1, 8, 8), 17, sigma=0.1)
    with pytest.raises(ValueError, match="latent_dim must be an integer >= 2"):
        VMFVAE((1, 8, 8), 17, latent_dim=1)
    with pytest.raises(ValueError, match="kappa"):
        VMFVAE((1, 8, 8), 17, kappa=-3.0)
    with pytest.raises(ValueError, match="no temperature"):
        MODELS["vmfvae"]().sample(4, temperature=0.5)
    with pytest.raises(ValueError, match="tau must lie in"):
        BNVAE((1, 8, 8), 17, tau=1.0)
    with pytest.raises(ValueError, match="at least 2 examples"):
        MODELS["bnvae"]().train().loss(digits[1][:1])
    MODELS["bnvae"]().eval().loss(digits[1][:1])  # single examples are fine in eval mode
