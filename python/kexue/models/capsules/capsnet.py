"""CapsNet (Sabour, Frosst & Hinton 2017; posts 揭开迷雾，来一顿美味的Capsule盛宴 and
再来一顿贺岁宴：从K-Means到Capsule): conv → primary capsules → class capsules by dynamic routing,
margin loss, masked reconstruction decoder. Sized for the 8×8 digits by default; the paper's
28×28 layout with ``image_size=28``."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kexue.ops import dynamic_routing
# Primary capsules use the routing kernel's squash formula, in plain torch (one small op).
from kexue.ops.capsules import reference_squash as squash

Tensor = torch.Tensor


def margin_loss(lengths: Tensor, labels: Tensor, m_plus: float = 0.9, m_minus: float = 0.1, lam: float = 0.5) -> Tensor:
    """Σ_k T_k·max(0, m⁺ − ‖v_k‖)² + λ(1 − T_k)·max(0, ‖v_k‖ − m⁻)², per sample. ``labels`` is
    [B] (one class) or [B, K] multi-hot (several digits in one image)."""
    target = F.one_hot(labels, lengths.shape[1]).to(lengths.dtype) if labels.dim() == 1 else labels.to(lengths.dtype)
    present = target * F.relu(m_plus - lengths).square()
    absent = lam * (1 - target) * F.relu(lengths - m_minus).square()
    return (present + absent).sum(1)


class CapsNet(nn.Module):
    """``shared_transform=True`` is the posts' variant: one transform per output capsule shared by
    every input capsule (fewer parameters, routing as clustering); ``squash`` picks the paper's
    or the posts' squash. ``recon_weight`` scales the reconstruction error (0.0005 in the paper,
    with pixel values in [0, 1]).

    Options:
    n_classes: number of class capsules (classes of the labels)
    conv_channels: channels of the first convolution (3x3 for 8x8 images, 9x9 for 28x28)
    primary_caps: primary capsule types (capsules per position of the stride-2 primary conv)
    primary_dim: dimension of each primary capsule's vector
    class_dim: dimension of each class capsule's vector
    iterations: dynamic-routing iterations per forward pass
    squash: squash function: 'sabour' (|s|²/(1+|s|²)·s/|s|, the paper's) or 'post'
      (|s|²/(0.5+|s|²)·s/|s|, the posts')
    shared_transform: one transform per class capsule shared by all primary capsules (the
      posts' variant) instead of one per primary capsule
    recon_weight: weight of the reconstruction error (summed squared error, pixels in [0, 1])
      beside the margin loss
    """

    supervised = True  # kexue train hands it (images, labels) batches

    def __init__(self, event_shape: Sequence[int] = (1, 8, 8), n_levels: Optional[int] = 17, n_classes: int = 10,
                 conv_channels: int = 256, primary_caps: int = 32, primary_dim: int = 8, class_dim: int = 16,
                 iterations: int = 3, squash: str = "sabour", shared_transform: bool = False,
                 recon_weight: float = 0.0005):
        super().__init__()
        c, h, w = event_shape
        if h != w or h not in (8, 28):
            raise ValueError(f"CapsNet: expects square 8×8 or 28×28 images, got {h}×{w}")
        k1, k2 = (9, 9) if h == 28 else (3, 3)
        self.event_shape, self.n_levels, self.n_classes = tuple(event_shape), n_levels, n_classes
        self.iterations, self.squash, self.recon_weight = iterations, squash, recon_weight
        self.primary_dim, self.class_dim = primary_dim, class_dim
        self.conv = nn.Conv2d(c, conv_channels, k1)
        self.primary = nn.Conv2d(conv_channels, primary_caps * primary_dim, k2, stride=2)
        side = (h - k1 + 1 - k2) // 2 + 1
        self.n_primary = primary_caps * side * side
        n_in = 1 if shared_transform else self.n_primary
        self.W = nn.Parameter(0.01 * torch.randn(n_in, n_classes, class_dim, primary_dim))
        d = c * h * w
        self.decoder = nn.Sequential(nn.Linear(n_classes * class_dim, 512), nn.ReLU(), nn.Linear(512, 1024), nn.ReLU(),
                                     nn.Linear(1024, d), nn.Sigmoid())

    def _scale(self, x: Tensor) -> Tensor:
        x = x.float()
        return x / (self.n_levels - 1) if self.n_levels else x

    def capsules(self, x: Tensor, return_couplings: bool = False):
        """Class capsules v [B, K, class_dim] (and the couplings c [B, N_in, K])."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"CapsNet: expected images [B, {', '.join(map(str, self.event_shape))}], got {list(x.shape)}")
        h = F.relu(self.conv(self._scale(x)))
        p = self.primary(h)  # [B, caps·dim, s, s]
        b = p.shape[0]
        u = p.view(b, -1, self.primary_dim, p.shape[-2], p.shape[-1]).permute(0, 1, 3, 4, 2).reshape(b, -1, self.primary_dim)
        u = squash(u, self.squash)
        u_hat = torch.einsum("ijdp,bip->bijd", self.W.expand(self.n_primary, -1, -1, -1), u)
        return dynamic_routing(u_hat.contiguous(), self.iterations, squash=self.squash, return_couplings=return_couplings)

    def forward(self, x: Tensor) -> Tensor:
        """Capsule lengths [B, K]: the class scores."""
        return self.capsules(x).norm(dim=-1)

    def reconstruct(self, v: Tensor, labels: Tensor) -> Tensor:
        mask = F.one_hot(labels, self.n_classes).to(v.dtype).unsqueeze(-1)
        return self.decoder((v * mask).flatten(1)).view(-1, *self.event_shape)

    def loss(self, batch) -> Dict[str, Tensor]:
        x, labels = batch
        v = self.capsules(x)
        lengths = v.norm(dim=-1)
        margin = margin_loss(lengths, labels).mean()
        recon = (self.reconstruct(v, labels) - self._scale(x)).square().flatten(1).sum(1).mean()
        acc = (lengths.argmax(1) == labels).float().mean()
        return {"loss": margin + self.recon_weight * recon, "margin": margin.detach(), "recon": recon.detach(),
                "acc": acc.detach()}


def overlapping_digits(images: Tensor, labels: Tensor, n: int, seed: int = 0):
    """The posts' experiment: pairs of different digits overlaid (pixel-wise max) into one image,
    with their two labels as a multi-hot target."""
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, len(images), (4 * n,), generator=g)
    j = torch.randint(0, len(images), (4 * n,), generator=g)
    keep = (labels[i] != labels[j]).nonzero().flatten()[:n]
    i, j = i[keep], j[keep]
    return torch.maximum(images[i], images[j]), torch.stack([labels[i], labels[j]], 1)


@torch.no_grad()
def top2_accuracy(model: CapsNet, images: Tensor, pairs: Tensor, batch: int = 256) -> float:
    """Fraction of overlaid images whose two longest capsules are exactly the two digits."""
    model.eval()
    hits = 0
    for k in range(0, len(images), batch):
        top = model(images[k : k + batch]).topk(2, dim=1).indices.sort(1).values
        hits += (top == pairs[k : k + batch].sort(1).values).all(1).sum().item()
    return hits / max(1, len(images))
