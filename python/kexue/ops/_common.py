"""Helpers shared by the op files."""
from __future__ import annotations

import math
import numbers
from typing import Optional

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


def check_int(value, name: str, op: str, minimum: int = 1, maximum: Optional[int] = None) -> int:
    """An integer argument of a public function: a real int (not a bool, float or string) in range.
    Under torch.compile the value may be symbolic: the op's own check (glue and fake) covers it."""
    if torch.compiler.is_compiling():
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{op}: {name} must be {bound}, got {value}")
    return int(value)


def check_real(value, name: str, op: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    """A real scalar argument of a public function: a finite number (NaN and inf rejected), optionally
    positive or non-negative. Under torch.compile, left to the op's own check."""
    if torch.compiler.is_compiling():
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or (positive and not value > 0) or (nonnegative and not value >= 0):
        what = "a positive" if positive else "a non-negative" if nonnegative else "a"
        raise ValueError(f"{op}: {name} must be {what} finite number, got {value!r}")
    return value
