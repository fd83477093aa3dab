"""The optimizer every kexue training loop uses."""
from __future__ import annotations

from typing import Iterable

import torch


def adam(params: Iterable[torch.nn.Parameter], lr: float, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    """Adam with the fused kernel where this torch has it for the parameters' device (CPU since
    torch 2.4): one pass per parameter group instead of ~6 ops per parameter, which is a fifth
    of a small flow's training step otherwise. Falls back to the foreach implementation."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=betas, foreach=True)
