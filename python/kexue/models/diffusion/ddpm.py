"""DDPM (Ho et al. 2020; the post 生成扩散模型漫谈(二) reads it as an autoregressive VAE): train a
denoiser to predict the noise ε of x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε with ‖ε − ε_θ(x_t, t)‖², then
sample with any of the samplers in ``samplers.py`` from the same trained network (the
probability-flow reading of post (六) is what lets DDIM and the ODE reuse it).

Data units: images with ``n_levels`` discrete values are mapped to [−1, 1]; continuous data are
standardised with the training set's per-dimension mean and standard deviation (kept as buffers),
so the schedule's unit-variance noise fits either. ``sample`` returns data units again.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from kexue import _random
from kexue.models.diffusion.denoisers import MLPDenoiser, UNet
from kexue.models.diffusion.samplers import GraphCache, SamplerConfig, sample_loop
from kexue.models.diffusion.schedules import Schedule, get_schedule
from kexue.ops.diffusion import q_sample

Tensor = torch.Tensor


class DDPM(nn.Module):
    """A denoiser ε_θ(x, t) with a noise schedule: ``loss`` for training, ``sample`` for sampling."""

    def __init__(self, denoiser: nn.Module, event_shape: Sequence[int], *, schedule: str | Schedule = "linear",
                 T: int = 1000, n_levels: Optional[int] = None, data_mean: Optional[Tensor] = None,
                 data_std: Optional[Tensor] = None):
        super().__init__()
        self.denoiser = denoiser
        self.event_shape = tuple(int(s) for s in event_shape)
        self.schedule = schedule if isinstance(schedule, Schedule) else get_schedule(schedule, T)
        if n_levels is not None and n_levels < 2:
            raise ValueError(f"n_levels must be >= 2 (or None for continuous data), got {n_levels}")
        self.n_levels = n_levels
        self.register_buffer("alphas_cumprod", self.schedule.alphas_cumprod.clone(), persistent=False)
        mean = torch.zeros(self.event_shape) if data_mean is None else torch.as_tensor(data_mean, dtype=torch.float32)
        std = torch.ones(self.event_shape) if data_std is None else torch.as_tensor(data_std, dtype=torch.float32)
        if mean.shape != self.event_shape or std.shape != self.event_shape:
            raise ValueError(f"data_mean and data_std must have the event shape {self.event_shape}")
        if not bool((std > 0).all()):
            raise ValueError("data_std must be positive")
        self.register_buffer("data_mean", mean)
        self.register_buffer("data_std", std)
        self._graphs = GraphCache()

    # -- data units <-> model units -------------------------------------------------------------
    def to_model(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"DDPM: x must be [batch, {', '.join(map(str, self.event_shape))}], got {list(x.shape)}")
        x = x.float()
        if self.n_levels is not None:
            return x / (self.n_levels - 1) * 2 - 1
        return (x - self.data_mean) / self.data_std

    def to_data(self, x: Tensor) -> Tensor:
        if self.n_levels is not None:
            return ((x + 1) / 2 * (self.n_levels - 1)).clamp(0, self.n_levels - 1)
        return x * self.data_std + self.data_mean

    # -- training -------------------------------------------------------------------------------
    def loss(self, x: Tensor) -> dict:
        x0 = self.to_model(x)
        B = x0.shape[0]
        t = torch.randint(0, self.schedule.T, (B,), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = q_sample(x0, noise, self.alphas_cumprod[t])
        err = (self.denoiser(x_t, t) - noise).pow(2).reshape(B, -1).mean(1)
        return {"loss": err.mean()}

    # -- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, sampler: str = "ddpm", steps: Optional[int] = None, eta: float = 0.0,
               clip_x0: Optional[float] = None, variance: str = "beta", spacing: str = "trailing",
               temperature: float = 1.0, generator: Optional[torch.Generator] = None, backend: str = "kexue",
               cuda_graph: bool = False, x_T: Optional[Tensor] = None) -> Tensor:
        """``n`` samples in data units. ``steps`` defaults to T for ddpm, 50 for ddim and
        ode_euler, 25 for ode_heun. ``temperature`` scales the starting noise x_T.
        ``generator`` (on the model's device) seeds x_T and every step's noise."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        cfg = SamplerConfig(sampler, steps, float(eta), clip_x0, variance, spacing)
        device = self.data_mean.device
        if x_T is None:
            x_T = temperature * _random.randn((n,) + self.event_shape, device=device, generator=generator)
        elif tuple(x_T.shape) != (n,) + self.event_shape:
            raise ValueError(f"x_T must have shape {[n, *self.event_shape]}, got {list(x_T.shape)}")
        was_training = self.training
        self.eval()
        try:
            x0 = sample_loop(self.denoiser, x_T, self.schedule, cfg, generator=generator, backend=backend,
                             cuda_graph=cuda_graph, graphs=self._graphs)
        finally:
            self.train(was_training)
        return self.to_data(x0)

    def _apply(self, fn, *args, **kwargs):
        self._graphs.clear()  # captured graphs point at the old parameters' memory
        return super()._apply(fn, *args, **kwargs)


def build_ddpm(dataset, *, schedule: str = "linear", T: int = 1000, hidden: int = 128, blocks: int = 3,
               base: int = 32) -> DDPM:
    """The registry's builder: an MLP denoiser for vectors, a UNet for images.

    Options:
    schedule: noise schedule of the forward process: 'linear' or 'cosine'
    T: number of diffusion timesteps of the noise schedule (the ddpm sampler's default steps)
    hidden: width of the MLP denoiser (vector data only)
    blocks: residual blocks of the MLP denoiser (vector data only)
    base: channels of the UNet's first level, doubled at the second (image data only)
    """
    shape = tuple(dataset.event_shape)
    if len(shape) == 1:
        x = dataset.x.float()
        return DDPM(MLPDenoiser(shape[0], hidden=hidden, blocks=blocks), shape, schedule=schedule, T=T,
                    data_mean=x.mean(0), data_std=x.std(0).clamp_min(1e-6))
    if len(shape) == 3:
        return DDPM(UNet(shape[0], base=base), shape, schedule=schedule, T=T, n_levels=dataset.n_levels,
                    data_mean=None if dataset.n_levels else dataset.x.float().mean(0),
                    data_std=None if dataset.n_levels else dataset.x.float().std(0).clamp_min(1e-6))
    raise ValueError(f"DDPM has denoisers for vectors [D] and images [C, H, W]; got event shape {list(shape)}")
