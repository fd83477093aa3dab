"""The residual cells of NVAE (Vahdat & Kautz 2020, Fig. 3; post 强大的NVAE).

- encoder cell: BN-Swish-conv3×3-BN-Swish-conv3×3 + squeeze-excitation;
- decoder cell: BN-conv1×1 (expand) -BN-Swish-depthwise conv5×5-BN-Swish-conv1×1-BN + SE, the
  depthwise convolution giving a large receptive field at a small cost;
- combiners that merge the encoder's features with the decoder's state (for the posterior) and
  the decoder's state with a latent sample.

Each cell returns ``skip(x) + 0.1·main(x)``: as in the paper's code, the residual branch starts
small, which keeps the deep hierarchy stable early in training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor
# Scale of each cell's residual branch (see the module docstring).
RESIDUAL_SCALE = 0.1


class SqueezeExcitation(nn.Module):
    """Channel gating (Hu et al. 2018): ``x · sigmoid(W₂ ReLU(W₁ mean_hw(x)))``."""

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 4):
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class EncoderCell(nn.Module):
    """BN-Swish-conv3×3-BN-Swish-conv3×3-SE; ``stride=2`` halves the resolution (the skip is
    then a 2×2 stride-2 convolution, which is the paper's "factorised reduce")."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"EncoderCell: stride must be 1 or 2, got {stride}")
        self.main = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
            nn.BatchNorm2d(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
            SqueezeExcitation(c_out),
        )
        if stride == 2:
            self.skip = nn.Conv2d(c_in, c_out, 2, stride=2)
        else:
            self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + RESIDUAL_SCALE * self.main(x)


class DecoderCell(nn.Module):
    """BN-conv1×1-BN-Swish-dwconv5×5-BN-Swish-conv1×1-BN-SE with channel expansion ``expand``;
    ``upsample=True`` first doubles the resolution (nearest neighbour) on both branches."""

    def __init__(self, c_in: int, c_out: int, upsample: bool = False, expand: int = 3):
        super().__init__()
        wide = expand * c_out
        self.upsample = upsample
        self.main = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.Conv2d(c_in, wide, 1),
            nn.BatchNorm2d(wide), nn.SiLU(), nn.Conv2d(wide, wide, 5, padding=2, groups=wide),
            nn.BatchNorm2d(wide), nn.SiLU(), nn.Conv2d(wide, c_out, 1),
            nn.BatchNorm2d(c_out), SqueezeExcitation(c_out),
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.skip(x) + RESIDUAL_SCALE * self.main(x)


class EncoderCombiner(nn.Module):
    """Posterior input of a group: encoder feature + conv1×1(decoder state)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, feature: Tensor, state: Tensor) -> Tensor:
        return feature + self.conv(state)


class DecoderCombiner(nn.Module):
    """Decoder state after a group: conv1×1([state; z])."""

    def __init__(self, channels: int, latent_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels + latent_channels, channels, 1)

    def forward(self, state: Tensor, z: Tensor) -> Tensor:
        return self.conv(torch.cat([state, z], dim=1))


__all__ = ["DecoderCell", "DecoderCombiner", "EncoderCell", "EncoderCombiner", "RESIDUAL_SCALE", "SqueezeExcitation"]
