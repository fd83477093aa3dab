"""Helpers shared by the op files."""
from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype reductions (log-dets, parameter gradients) are carried in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def empty_grad(like: torch.Tensor, wanted: bool) -> torch.Tensor:
    """What a backward kernel returns for a gradient: full when wanted, else an empty [0]."""
    return like.new_empty(like.shape) if wanted else like.new_empty(0)


def can_check_values(t: torch.Tensor) -> bool:
    """Whether a check that reads the data is free: a non-empty CPU tensor, not being traced by
    torch.compile (on a GPU it would cost a host synchronisation; under tracing there is no data,
    and the kernels' own checks run when the compiled code does)."""
    return t.device.type == "cpu" and t.numel() > 0 and not torch.compiler.is_compiling()
