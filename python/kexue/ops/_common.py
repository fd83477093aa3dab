"""Helpers shared by the op files."""
from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype reductions (log-dets, parameter gradients) are carried in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def empty_grad(like: torch.Tensor, wanted: bool) -> torch.Tensor:
    """What a backward kernel returns for a gradient: full when wanted, else an empty [0]."""
    return like.new_empty(like.shape) if wanted else like.new_empty(0)
