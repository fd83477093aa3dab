"""NVAE: shapes, training on the digits, the KL warm-up schedule, the residual-normal KL against
torch.distributions, the spectral regulariser against the exact σ_max, temperature sampling,
importance-sampling terms, state-dict round trip, bad input."""
import io
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from kexue.data import get_dataset
from kexue.models.vae.nvae import NVAE, residual_normal_kl

SMALL = dict(channels=8, latent_channels=2, groups_per_scale=(1, 2), expand=2)


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits", "train").x, get_dataset("digits", "test").x


def small_nvae(seed=0, **kw):
    torch.manual_seed(seed)
    return NVAE((1, 8, 8), 17, **{**SMALL, **kw})


def test_residual_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu_p, log_sigma_p, d_mu, log_d_sigma = (torch.randn(5, 3, 4, generator=g, dtype=torch.float64) for _ in range(4))
    q = Normal(mu_p + d_mu, torch.exp(log_sigma_p + log_d_sigma))
    p = Normal(mu_p, torch.exp(log_sigma_p))
    torch.testing.assert_close(residual_normal_kl(d_mu, log_d_sigma, log_sigma_p), kl_divergence(q, p))


def test_shapes(digits):
    x = digits[0][:6]
    model = small_nvae()
    t = model.negative_elbo(x)
    assert t["recon"].shape == t["kl"].shape == t["bound"].shape == (6,)
    assert t["kl_groups"].shape == (6, 3) and (t["kl_groups"] >= 0).all()
    torch.testing.assert_close(t["bound"], t["recon"] + t["kl"])
    out = model.loss(x)
    assert {"loss", "bpd", "recon", "kl", "kl_coeff", "spectral"} <= set(out)
    model.eval()
    assert model.importance_terms(x, 3).shape == (3, 6)
    for pixels in ("sample", "mode", "mean"):
        s = model.sample(5, pixels=pixels)
        assert s.shape == (5, 1, 8, 8) and s.min() >= 0 and s.max() <= 16
    assert model.sample(0).shape == (0, 1, 8, 8)
    # one scale only, and three scales
    assert NVAE((1, 8, 8), 17, channels=4, latent_channels=1, groups_per_scale=(1,)).sample(2).shape == (2, 1, 8, 8)
    NVAE((1, 8, 8), 17, channels=4, latent_channels=1, groups_per_scale=(2, 1, 1)).loss(x)


def test_posterior_log_ratio_is_consistent_with_the_analytic_kl(digits):
    """E[log p(z_g|z_<g) − log q(z_g|z_<g, x) | z_<g] = −KL_g(z_<g) for every group, so the sampled
    log-density ratio of the hierarchy plus the analytic KL (both at the same samples) has mean
    zero: a check on the whole top-down pass, not only on the formula."""
    model = small_nvae()
    model.eval()
    n = 2000
    x = digits[1][:1].expand(n, 1, 8, 8)
    with torch.no_grad():
        t = model.negative_elbo(x, generator=torch.Generator().manual_seed(1))
    d = t["log_p_minus_log_q"] + t["kl"]
    se = d.std() / math.sqrt(n)
    assert abs(d.mean()) < 4 * se, (d.mean().item(), se.item(), t["kl"].mean().item())
    assert t["kl"].std() > 0  # the lower groups' KL depends on the sampled upper groups


def test_loss_falls_on_digits(digits):
    x = digits[0]
    model = small_nvae(warmup_steps=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        out = model.loss(x[torch.randint(0, len(x), (32,), generator=g)])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["bpd"].item())
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5, losses


def test_kl_warmup_schedule_and_step_counter(digits):
    x = digits[0][:8]
    model = small_nvae(warmup_steps=10, min_kl_coeff=0.05)
    seen = []
    for _ in range(13):
        seen.append(model.loss(x)["kl_coeff"].item())
    expected = [min(1.0, max(0.05, k / 10)) for k in range(13)]
    assert seen == pytest.approx(expected)
    assert model.steps_done.item() == 13
    model.eval()  # evaluation leaves the schedule where it is
    model.loss(x)
    model.evaluate(x)
    assert model.steps_done.item() == 13
    fresh = small_nvae(seed=1, warmup_steps=10, min_kl_coeff=0.05)
    fresh.load_state_dict(model.state_dict())  # a resumed run continues the schedule
    assert fresh.kl_coefficient().item() == 1.0
    # warm-up off: β = 1 from the first step, and the loss is the bound plus the regulariser
    plain = small_nvae(warmup_steps=0)
    out = plain.loss(x)
    assert out["kl_coeff"].item() == 1.0
    torch.testing.assert_close(out["loss"].detach(), out["bpd"] + plain.spectral_lambda * out["spectral"],
                               rtol=1e-5, atol=1e-5)


def test_spectral_regulariser_matches_exact_sigma_max():
    model = small_nvae()
    sigmas = model.spectral_norms(500)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    exact = torch.stack([torch.linalg.matrix_norm(c.weight.detach().flatten(1), ord=2) for c in convs])
    assert sigmas.shape == (len(convs),)
    torch.testing.assert_close(sigmas.detach(), exact, rtol=2e-3, atol=1e-5)
    # σ = uᵀWv is differentiable in W with gradient u vᵀ
    w = convs[0].weight
    (grad,) = torch.autograd.grad(model.spectral_norms(1)[0], w)
    torch.testing.assert_close(grad.flatten(1), torch.outer(convs[0].sr_u, convs[0].sr_v))
    # the power-iteration vectors are saved with the model
    assert any(k.endswith("sr_u") for k in model.state_dict())


def test_temperature_sampling_is_reproducible():
    model = small_nvae()
    model.eval()
    a = model.sample(6, temperature=0.7, generator=torch.Generator().manual_seed(3))
    b = model.sample(6, temperature=0.7, generator=torch.Generator().manual_seed(3))
    c = model.sample(6, temperature=0.7, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # at temperature 0 every group takes its prior mean: the mode image does not depend on the seed
    m1 = model.sample(2, temperature=0.0, generator=torch.Generator().manual_seed(1), pixels="mode")
    m2 = model.sample(2, temperature=0.0, generator=torch.Generator().manual_seed(2), pixels="mode")
    assert torch.equal(m1, m2) and torch.equal(m1[0], m1[1])


def test_importance_terms_protocol(digits):
    from kexue.models.vae.likelihood import log_likelihood

    x = digits[1][:16]
    model = small_nvae()
    model.eval()
    g = torch.Generator().manual_seed(0)
    a = model.importance_terms(x, 4, generator=g)
    b = model.importance_terms(x, 4, generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, 16) and torch.equal(a, b) and torch.isfinite(a).all()
    elbo = -model.negative_elbo(x.repeat(50, 1, 1, 1), generator=g)["bound"].mean()
    iw = log_likelihood(model, x, 50, generator=g).mean()
    assert iw > elbo  # the importance-weighted bound is tighter than the ELBO


def test_state_dict_round_trip(digits):
    x = digits[0][:8]
    model = small_nvae()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        loss = model.loss(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fresh = small_nvae(seed=7)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    model.eval()
    fresh.eval()
    a = model.negative_elbo(x, generator=torch.Generator().manual_seed(0))["bound"]
    b = fresh.negative_elbo(x, generator=torch.Generator().manual_seed(0))["bound"]
    torch.testing.assert_close(a, b)
    assert fresh.steps_done.item() == 3


def test_registered_for_kexue_train():
    from kexue.train import registry

    entry = registry.get("nvae")
    assert entry.default_data == "digits"
    assert isinstance(entry.build(get_dataset("digits", "test"), **SMALL), NVAE)


def test_bad_input(digits):
    with pytest.raises(ValueError, match=r"images \[C, H, W\]"):
        NVAE((64,), 17)
    with pytest.raises(ValueError, match="n_levels"):
        NVAE((1, 8, 8), None)
    with pytest.raises(ValueError, match="divisible by 4"):
        NVAE((1, 6, 6), 17, groups_per_scale=(1, 1, 1))
    with pytest.raises(ValueError, match="groups_per_scale"):
        NVAE((1, 8, 8), 17, groups_per_scale=(1, 0))
    with pytest.raises(ValueError, match="warmup_steps"):
        NVAE((1, 8, 8), 17, warmup_steps=-1)
    with pytest.raises(ValueError, match="spectral_lambda"):
        NVAE((1, 8, 8), 17, spectral_lambda=-1.0)
    model = small_nvae()
    with pytest.raises(ValueError, match=r"expected images \[B, 1, 8, 8\]"):
        model.loss(torch.zeros(2, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"levels must lie in \[0, 16\]"):
        model.loss(torch.full((2, 1, 8, 8), 17))
    with pytest.raises(ValueError, match="integer levels"):
        model.loss(torch.full((2, 1, 8, 8), 0.5))
    with pytest.raises(TypeError, match="pixel levels"):
        model.loss([[0]])
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-1.0)
    with pytest.raises(ValueError, match="pixels"):
        model.sample(2, pixels="median")
    with pytest.raises(ValueError, match="k must be"):
        model.importance_terms(digits[1][:2], 0)
