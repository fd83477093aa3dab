"""Schedules, samplers and the DDPM model (MODELS.md D1-D2)."""
import math

import pytest
import torch

from kexue.data import get_dataset
from kexue.metrics import mmd_rbf, sliced_wasserstein
from kexue.models.diffusion import (
    DDPM,
    MLPDenoiser,
    SamplerConfig,
    UNet,
    build_ddpm,
    cosine_schedule,
    linear_schedule,
    respaced_timesteps,
    sample_loop,
)
from kexue.ops import diffusion as D


def test_linear_schedule_matches_ho_et_al():
    s = linear_schedule(1000)
    torch.testing.assert_close(s.betas[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0))


def test_cosine_schedule_matches_nichol_dhariwal():
    T, s = 1000, 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    ac = cosine_schedule(T).alphas_cumprod
    for t in (0, 10, 500, 900):  # before β reaches its 0.999 cap, ᾱ_t = f(t+1)/f(0)
        assert ac[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-12)
    assert cosine_schedule(T).betas.max().item() <= 0.999 + 1e-12


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_respacing(spacing):
    ts = respaced_timesteps(1000, 50, spacing)
    assert len(ts) == 50 and ts == sorted(ts, reverse=True) and len(set(ts)) == 50
    assert 0 <= ts[-1] and ts[0] <= 999
    if spacing != "leading":
        assert ts[0] == 999
    assert respaced_timesteps(1000, 1000, spacing) == list(range(999, -1, -1))


def test_respaced_ddpm_chain_of_all_steps_is_the_schedule():
    s = linear_schedule(100)
    r = s.respace(100)
    torch.testing.assert_close(r.ddpm_schedule(), s.alphas_cumprod)
    assert r.alpha_bar_prev[-1] == 1.0


def test_schedule_errors():
    with pytest.raises(ValueError, match="steps must be an int"):
        respaced_timesteps(100, 0)
    with pytest.raises(ValueError, match="spacing must be"):
        respaced_timesteps(100, 10, "random")
    with pytest.raises(ValueError, match="strictly decreasing"):
        from kexue.models.diffusion import Schedule
        Schedule(torch.tensor([0.5, 0.6]))
    with pytest.raises(ValueError, match="unknown schedule"):
        from kexue.models.diffusion import get_schedule
        get_schedule("quadratic")


class _Gaussian(torch.nn.Module):
    """The exact ε-prediction of data N(0, v·I) under the model's schedule."""

    def __init__(self, schedule, v):
        super().__init__()
        self.ac = schedule.alphas_cumprod.float()
        self.v = v

    def forward(self, x, t):
        ab = self.ac[t].reshape(-1, *([1] * (x.dim() - 1)))
        return (1 - ab).sqrt() * x / (ab * self.v + 1 - ab)


@pytest.mark.parametrize("sampler,steps", [("ddim", 20), ("ode_euler", 20), ("ode_heun", 10), ("ddpm", 30)])
def test_kexue_and_torch_backends_agree(sampler, steps):
    s = linear_schedule(1000)
    model = _Gaussian(s, 0.3)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    cfg = SamplerConfig(sampler, steps, clip_x0=None)
    if sampler == "ddpm":  # stochastic: same law, not the same draws; compare the noiseless limit
        cfg = SamplerConfig("ddim", steps, eta=0.0)
    ours = sample_loop(model, x_T, s, cfg, backend="kexue")
    ref = sample_loop(model, x_T, s, cfg, backend="torch")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_samplers_recover_a_gaussian():
    # With the exact ε of N(0, v), every sampler must produce samples of variance ≈ v, up to its
    # discretisation error (DDIM is first order: 50 steps are still ~10% off, 200 steps ~2%).
    s = linear_schedule(1000)
    v = 0.3
    model = _Gaussian(s, v)
    for sampler, steps in (("ddpm", None), ("ddim", 200), ("ode_heun", 25)):
        x_T = torch.randn(20000, 2, generator=torch.Generator().manual_seed(1))
        x0 = sample_loop(model, x_T, s, SamplerConfig(sampler, steps), generator=torch.Generator().manual_seed(2))
        assert x0.var().item() == pytest.approx(v, rel=0.06), sampler
        assert abs(x0.mean().item()) < 0.02, sampler


def test_ddpm_sampling_is_seeded():
    ds = get_dataset("moons", "train", n=512)
    model = build_ddpm(ds, T=50, hidden=16, blocks=1)
    a = model.sample(32, generator=torch.Generator().manual_seed(3))
    b = model.sample(32, generator=torch.Generator().manual_seed(3))
    c = model.sample(32, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    d1 = model.sample(32, sampler="ddim", steps=10, generator=torch.Generator().manual_seed(3))
    assert d1.shape == (32, 2) and torch.isfinite(d1).all()


def test_ddpm_trains_on_moons_and_samples_approach_the_data():
    torch.manual_seed(0)
    train = get_dataset("moons", "train", n=4096)
    test = get_dataset("moons", "test", n=2000)
    model = build_ddpm(train, T=200, hidden=64, blocks=2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for step in range(400):
        idx = torch.randint(0, len(train.x), (256,))
        loss = model.loss(train.x[idx])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-50:]) / 50 < 0.8 * sum(losses[:50]) / 50
    gen = torch.Generator().manual_seed(0)
    untrained = build_ddpm(train, T=200, hidden=64, blocks=2)
    before = untrained.sample(1000, sampler="ddim", steps=20, generator=gen)
    after = model.sample(1000, sampler="ddim", steps=20, generator=torch.Generator().manual_seed(0))
    sw = lambda s: sliced_wasserstein(s, test.x, generator=torch.Generator().manual_seed(0)).item()
    assert sw(after) < 0.5 * sw(before)
    assert mmd_rbf(after, test.x).item() < mmd_rbf(before, test.x).item()


def test_unet_ddpm_on_digits():
    torch.manual_seed(0)
    ds = get_dataset("digits", "train", n=256)
    model = build_ddpm(ds, T=100, base=16)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = model.loss(ds.x[torch.randint(0, 256, (64,))])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5])
    x = model.sample(4, sampler="ode_heun", steps=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 8, 8) and x.min() >= 0 and x.max() <= 16


def test_state_dict_round_trip():
    ds = get_dataset("moons", "train", n=256)
    a, b = build_ddpm(ds, T=50, hidden=16, blocks=1), build_ddpm(ds, T=50, hidden=16, blocks=1)
    b.load_state_dict(a.state_dict())
    x = ds.x[:8]
    t = torch.arange(8)
    torch.testing.assert_close(a.denoiser(a.to_model(x), t), b.denoiser(b.to_model(x), t))
    torch.testing.assert_close(a.sample(5, generator=torch.Generator().manual_seed(0)),
                               b.sample(5, generator=torch.Generator().manual_seed(0)))


def test_bad_inputs():
    ds = get_dataset("moons", "train", n=64)
    m = build_ddpm(ds, T=50, hidden=8, blocks=1)
    with pytest.raises(ValueError, match="sampler must be one of"):
        m.sample(2, sampler="euler")
    with pytest.raises(ValueError, match="cuda_graph=True needs the sample on a CUDA device"):
        m.sample(2, cuda_graph=True)
    with pytest.raises(ValueError, match="x_T must have shape"):
        m.sample(2, x_T=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        m.sample(-1)
    with pytest.raises(ValueError, match="clip_x0 is for the ddpm and ddim samplers"):
        m.sample(2, sampler="ode_heun", clip_x0=1.0)
    with pytest.raises(ValueError, match="DDPM: x must be"):
        m.loss(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="MLPDenoiser: x must be"):
        MLPDenoiser(2)(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="divisible by 2"):
        UNet(1)(torch.zeros(1, 1, 7, 7), torch.zeros(1))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_sampling_matches_eager():
    ds = get_dataset("moons", "train", n=256)
    m = build_ddpm(ds, T=50, hidden=16, blocks=1).cuda()
    x_T = torch.randn(128, 2, device="cuda")
    for sampler in ("ddim", "ode_heun"):
        eager = m.sample(128, sampler=sampler, steps=10, x_T=x_T)
        graphed = m.sample(128, sampler=sampler, steps=10, x_T=x_T, cuda_graph=True)
        again = m.sample(128, sampler=sampler, steps=10, x_T=x_T, cuda_graph=True)
        torch.testing.assert_close(graphed, eager)
        torch.testing.assert_close(again, eager)
    # Stochastic: each replay draws fresh in-kernel noise.
    a = m.sample(128, sampler="ddpm", x_T=x_T, cuda_graph=True)
    b = m.sample(128, sampler="ddpm", x_T=x_T, cuda_graph=True)
    assert not torch.equal(a, b)
