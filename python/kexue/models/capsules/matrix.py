"""Matrix capsules with EM routing (Hinton, Sabour & Frosst 2018; post 三味Capsule：矩阵Capsule
与EM路由), sized for the 8×8 digits: conv → primary capsules (4×4 pose + activation) → one
convolutional capsule layer (K×K windows, EM routing per output position) → class capsules
with coordinate addition, trained with the spread loss and its margin schedule."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kexue.ops import em_routing

Tensor = torch.Tensor


def spread_loss(activations: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Σ_{i≠t} max(0, m − (a_t − a_i))² per sample."""
    a_t = activations.gather(1, labels[:, None])
    gap = F.relu(margin - (a_t - activations)).square()
    return gap.sum(1) - gap.gather(1, labels[:, None]).squeeze(1)  # drop the i = t term


def _pose_init(n_in: int, n_out: int) -> Tensor:
    """Transforms start near the identity (plus noise), so votes start near the input poses."""
    return torch.eye(4).expand(n_in, n_out, 4, 4) + 0.1 * torch.randn(n_in, n_out, 4, 4)


class MatrixCapsNet(nn.Module):
    """Matrix capsules with EM routing over images [B, C, H, W] (see the module docstring):
    predicts ``n_classes`` class activations, trained with the spread loss.

    Options:
    n_classes: number of class capsules (classes of the labels)
    conv_channels: channels of the first (3x3, stride-2) convolution
    primary_types: primary capsule types (4x4 pose + activation) per position
    conv_types: capsule types of the convolutional capsule layer
    kernel: window size K of the convolutional capsule layer (K x K primary positions)
    stride: stride of the convolutional capsule layer's windows
    iterations: EM-routing iterations per forward pass (in both capsule layers)
    final_lambda: inverse temperature of the activations at the last EM iteration (raised
      linearly to it over the iterations), >= 0
    margin_steps: training steps over which the spread-loss margin rises from 0.2 to 0.9
    """

    supervised = True  # kexue train hands it (images, labels) batches

    def __init__(self, event_shape: Sequence[int] = (1, 8, 8), n_levels: Optional[int] = 17, n_classes: int = 10,
                 conv_channels: int = 32, primary_types: int = 8, conv_types: int = 8, kernel: int = 3,
                 stride: int = 1, iterations: int = 3, final_lambda: float = 0.01, margin_steps: int = 1000):
        super().__init__()
        c, h, w = event_shape
        self.event_shape, self.n_levels, self.n_classes = tuple(event_shape), n_levels, n_classes
        self.iterations, self.final_lambda, self.kernel, self.stride = iterations, final_lambda, kernel, stride
        self.primary_types, self.conv_types, self.margin_steps = primary_types, conv_types, margin_steps
        self.conv1 = nn.Conv2d(c, conv_channels, 3, stride=2, padding=1)
        self.side1 = (h + 1) // 2
        self.side2 = (self.side1 - kernel) // stride + 1
        if self.side2 < 1 or h != w:
            raise ValueError(f"MatrixCapsNet: images {h}×{w} too small for a {kernel}×{kernel} capsule layer")
        self.primary_pose = nn.Conv2d(conv_channels, primary_types * 16, 1)
        self.primary_act = nn.Conv2d(conv_channels, primary_types, 1)
        n_in = kernel * kernel * primary_types
        self.W_conv = nn.Parameter(_pose_init(n_in, conv_types))
        self.beta_u1, self.beta_a1 = nn.Parameter(torch.zeros(conv_types)), nn.Parameter(torch.zeros(conv_types))
        self.W_class = nn.Parameter(_pose_init(conv_types, n_classes))  # shared over positions
        self.beta_u2, self.beta_a2 = nn.Parameter(torch.zeros(n_classes)), nn.Parameter(torch.zeros(n_classes))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def _scale(self, x: Tensor) -> Tensor:
        x = x.float()
        return x / (self.n_levels - 1) if self.n_levels else x

    def forward(self, x: Tensor) -> Tensor:
        """Class-capsule activations [B, K] in (0, 1)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"MatrixCapsNet: expected images [B, {', '.join(map(str, self.event_shape))}], "
                             f"got {list(x.shape)}")
        b, k, st, s1, s2 = x.shape[0], self.kernel, self.stride, self.side1, self.side2
        h = F.relu(self.conv1(self._scale(x)))
        pose = self.primary_pose(h).view(b, self.primary_types, 16, s1, s1).permute(0, 3, 4, 1, 2)
        act = torch.sigmoid(self.primary_act(h)).permute(0, 2, 3, 1)  # [b, s1, s1, types]
        # K×K windows of capsules → one routing problem per output position
        pose_w = pose.unfold(1, k, st).unfold(2, k, st)  # [b, s2, s2, types, 16, k, k]
        pose_w = pose_w.permute(0, 1, 2, 5, 6, 3, 4).reshape(b * s2 * s2, k * k * self.primary_types, 4, 4)
        act_w = act.unfold(1, k, st).unfold(2, k, st).permute(0, 1, 2, 4, 5, 3).reshape(b * s2 * s2, -1)
        votes = torch.einsum("nipq,icqr->nicpr", pose_w, self.W_conv).flatten(3)
        mu, a = em_routing(votes.contiguous(), act_w.contiguous(), self.beta_u1, self.beta_a1, self.iterations,
                           final_lambda=self.final_lambda)
        # class capsules: a transform per capsule type shared over positions, plus the scaled
        # coordinates of each position added to the first two vote entries (coordinate addition)
        pose2 = mu.view(b, s2 * s2, self.conv_types, 4, 4)
        votes2 = torch.einsum("bpcqr,ckrs->bpckqs", pose2, self.W_class).flatten(4)
        coords = (torch.arange(s2, dtype=votes2.dtype, device=votes2.device) + 0.5) / s2
        grid = torch.stack(torch.meshgrid(coords, coords, indexing="ij"), -1).view(s2 * s2, 1, 1, 2)
        votes2 = torch.cat([votes2[..., :2] + grid, votes2[..., 2:]], -1)
        votes2 = votes2.reshape(b, s2 * s2 * self.conv_types, self.n_classes, 16)
        _, a2 = em_routing(votes2.contiguous(), a.reshape(b, -1).contiguous(), self.beta_u2, self.beta_a2,
                           self.iterations, final_lambda=self.final_lambda)
        return a2

    def margin(self) -> float:
        """The spread-loss margin, raised from 0.2 to 0.9 over ``margin_steps`` training steps."""
        return 0.2 + 0.7 * min(1.0, self.step.item() / max(1, self.margin_steps))

    def loss(self, batch) -> Dict[str, Tensor]:
        x, labels = batch
        a = self(x)
        loss = spread_loss(a, labels, self.margin()).mean()
        if self.training:
            self.step += 1
        return {"loss": loss, "acc": (a.argmax(1) == labels).float().mean().detach()}
