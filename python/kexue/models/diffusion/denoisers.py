"""ε-prediction networks ε_θ(x_t, t): an MLP for vectors (2-D toys) and a small UNet for 8×8 images.

Both embed the timestep with the sinusoidal features of the Transformer (Vaswani et al. 2017), as
DDPM does, and take ``t`` as a tensor [B] (or one value for the batch)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

Tensor = torch.Tensor


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[B, dim] features cos(t·ω_i), sin(t·ω_i) with ω_i = max_period^(−i/(dim/2))."""
    if dim % 2:
        raise ValueError(f"the time embedding size must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float().reshape(-1, 1) * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def _batch_times(t, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, device=x.device)
    return t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.reshape(-1)


class TimeMLP(nn.Module):
    """Sinusoidal features → a 2-layer MLP: the time vector every block adds."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(nn.Linear(dim, out), nn.SiLU(), nn.Linear(out, out))

    def forward(self, t: Tensor) -> Tensor:
        return self.net(timestep_embedding(t, self.dim))


class MLPDenoiser(nn.Module):
    """ε_θ for vectors [B, D]: residual SiLU blocks, each told the time by addition. No
    normalisation layers on purpose: at large t the answer is ε ≈ x_t itself, and a LayerNorm
    would erase the scale of x_t that the network has to reproduce."""

    def __init__(self, dim: int, hidden: int = 128, blocks: int = 3, time_dim: int = 64):
        super().__init__()
        if dim < 1 or hidden < 1 or blocks < 1:
            raise ValueError(f"dim, hidden and blocks must be positive, got {dim}, {hidden}, {blocks}")
        self.dim = dim
        self.time = TimeMLP(time_dim, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(blocks))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLPDenoiser: x must be [batch, {self.dim}], got {list(x.shape)}")
        temb = self.time(_batch_times(t, x))
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + temb)
        return self.out(h)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time added in between (the DDPM UNet's block)."""

    def __init__(self, cin: int, cout: int, tdim: int, groups: int = 8):
        super().__init__()
        self.n1 = nn.GroupNorm(min(groups, cin), cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(tdim, cout)
        self.n2 = nn.GroupNorm(min(groups, cout), cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.c1(F.silu(self.n1(x)))
        h = h + self.t(temb)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """A small UNet for images [B, C, H, W] with H, W divisible by 2^(len(mults)−1): one ResBlock
    per level on the way down and two on the way up (with skips), average-pool down,
    nearest-neighbour up. The default suits 8×8 digits (8 → 4)."""

    def __init__(self, channels: int = 1, base: int = 32, mults: Sequence[int] = (1, 2), time_dim: int = 64):
        super().__init__()
        if channels < 1 or base < 1 or not mults:
            raise ValueError("UNet: channels and base must be positive and mults non-empty")
        tdim = 4 * base
        self.levels = len(mults)
        self.time = TimeMLP(time_dim, tdim)
        self.inp = nn.Conv2d(channels, base, 3, padding=1)
        widths = [base * m for m in mults]
        self.down = nn.ModuleList()
        c = base
        for w in widths:
            self.down.append(ResBlock(c, w, tdim))
            c = w
        self.mid = nn.ModuleList([ResBlock(c, c, tdim), ResBlock(c, c, tdim)])
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(ResBlock(c + w, w, tdim))
            c = w
        self.out = nn.Sequential(nn.GroupNorm(min(8, c), c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"UNet: x must be [batch, channels, height, width], got {list(x.shape)}")
        f = 2 ** (self.levels - 1)
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"UNet: height and width must be divisible by {f}, got {list(x.shape[2:])}")
        temb = self.time(_batch_times(t, x))
        h = self.inp(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, temb)
            skips.append(h)
            if i < self.levels - 1:
                h = F.avg_pool2d(h, 2)
        for block in self.mid:
            h = block(h, temb)
        for i, block in enumerate(self.up):
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skip], dim=1), temb)
        return self.out(h)
