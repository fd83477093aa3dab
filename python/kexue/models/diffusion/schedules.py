"""Noise schedules of DDPM (MODELS.md D1) and timestep respacing.

A schedule is its ᾱ_t = Π_{s≤t}(1 − β_s) for t = 0..T−1, kept in float64: near t = 0, 1 − ᾱ_t
is ~1e-4 and fp32 would keep only three of its digits.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

Tensor = torch.Tensor


class Schedule:
    """ᾱ_t for t = 0..T−1 (``alphas_cumprod``), with the betas it came from."""

    def __init__(self, alphas_cumprod: Tensor, name: str = "custom"):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
        if ac.dim() != 1 or len(ac) < 1:
            raise ValueError(f"alphas_cumprod must be 1-D and non-empty, got shape {tuple(ac.shape)}")
        if not bool(((ac > 0) & (ac < 1)).all()):
            raise ValueError("alphas_cumprod must lie in (0, 1)")
        if len(ac) > 1 and not bool((ac[1:] < ac[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        self.alphas_cumprod = ac
        self.name = name

    @property
    def T(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def betas(self) -> Tensor:
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        return 1 - self.alphas_cumprod / prev

    def respace(self, steps: int, spacing: str = "trailing") -> "Respaced":
        return Respaced(self, respaced_timesteps(self.T, steps, spacing))

    def __repr__(self) -> str:
        return f"Schedule({self.name}, T={self.T})"


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Ho et al. (2020): β linear from 1e-4 to 0.02 over T = 1000 steps (the ends scale as 1000/T
    when T differs, so the total noise stays comparable)."""
    _check_T(T)
    scale = 1000.0 / T
    betas = torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64)
    if not bool((betas < 1).all()):
        raise ValueError(f"T={T} is too small for the linear schedule: some β ≥ 1")
    return Schedule(torch.cumprod(1 - betas, 0), "linear")


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal (2021): ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2), with each
    β = 1 − ᾱ_t/ᾱ_{t−1} clipped to ``max_beta`` so the last steps stay finite."""
    _check_T(T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    betas = torch.tensor([min(1 - f(t + 1) / f(t), max_beta) for t in range(T)], dtype=torch.float64)
    return Schedule(torch.cumprod(1 - betas, 0), "cosine")


def get_schedule(name: str, T: int = 1000) -> Schedule:
    if name == "linear":
        return linear_schedule(T)
    if name == "cosine":
        return cosine_schedule(T)
    raise ValueError(f"unknown schedule {name!r}; choose 'linear' or 'cosine'")


def _check_T(T: int) -> None:
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}")


def respaced_timesteps(T: int, steps: int, spacing: str = "trailing") -> List[int]:
    """``steps`` of the ``T`` training timesteps to sample with, in decreasing order.

    "trailing" (Lin et al. 2024) always starts from the last step T−1, the one whose ᾱ is nearest
    to pure noise; "leading" (DDIM's original choice) takes 0, T/steps, ...; "linspace" rounds an
    even grid from T−1 to 0.
    """
    if not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an int in [1, {T}], got {steps!r}")
    if spacing == "trailing":
        ts = [round(T - 1 - i * T / steps) for i in range(steps)]
    elif spacing == "leading":
        ts = [(steps - 1 - i) * (T // steps) for i in range(steps)]
    elif spacing == "linspace":
        ts = [round((T - 1) * (steps - 1 - i) / max(steps - 1, 1)) for i in range(steps)]
    else:
        raise ValueError(f"spacing must be 'trailing', 'leading' or 'linspace', got {spacing!r}")
    ts = sorted(set(max(0, min(T - 1, t)) for t in ts), reverse=True)
    if len(ts) != steps:  # only for steps close to T with rounding collisions
        raise ValueError(f"{steps} steps with spacing {spacing!r} collide for T={T}; choose fewer steps")
    return ts


class Respaced:
    """A decreasing subset of timesteps and the ᾱ pairs a sampler walks: step k goes from
    ᾱ[ts[k]] to ᾱ[ts[k+1]] (to 1, the data, after the last one). Nichol & Dhariwal (2021): the
    respaced chain is a DDPM with β'_k = 1 − ᾱ_{ts[k]}/ᾱ_{ts[k+1]}, which ``ddpm_schedule`` gives."""

    def __init__(self, schedule: Schedule, timesteps: Sequence[int]):
        self.schedule = schedule
        self.timesteps = list(timesteps)
        ac = schedule.alphas_cumprod
        self.alpha_bar = [float(ac[t]) for t in self.timesteps]
        self.alpha_bar_prev = self.alpha_bar[1:] + [1.0]

    def __len__(self) -> int:
        return len(self.timesteps)

    def ddpm_schedule(self) -> Tensor:
        """ᾱ of the respaced chain in increasing time: index k ↔ timestep ts[-1-k]."""
        return torch.tensor(self.alpha_bar[::-1], dtype=torch.float64)


def alpha_bar_at(schedule: Schedule, t: Tensor, device: Optional[torch.device] = None) -> Tensor:
    """ᾱ at integer timesteps ``t`` as float64 on ``device``."""
    return schedule.alphas_cumprod.to(device or t.device)[t]
