"""Autocast (AMP) for the ops that take several floating tensors of one dtype: inside
torch.autocast a network's outputs come out in bf16/fp16 while the tensors they meet may still be
fp32 (a coupling's s and t from an autocast MLP, its x from the data). These ops then run in the
widest of their inputs' dtypes, as torch's own "promote" ops (cat, addcmul, ...) do; ops without
half-precision kernels (EM routing) take at least float32. Log-dets and attention statistics keep
their fp32 accumulation whatever the inputs."""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch

_lib = torch.library.Library("kexue", "IMPL")
_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}


def promote_under_autocast(name: str, positions: Sequence[int], floor: Optional[torch.dtype] = None) -> None:
    """Register AutocastCPU/AutocastCUDA kernels for kexue::<name>: the floating tensors at
    `positions` are cast to their widest dtype (at least `floor`), then the op runs with
    autocast off."""
    op = getattr(torch.ops.kexue, name).default

    for device, key in _KEYS.items():
        def kernel(*args, _device=device):
            floats = [args[i] for i in positions
                      if isinstance(args[i], torch.Tensor) and args[i].dtype.is_floating_point]
            if floats:
                dtype = functools.reduce(torch.promote_types, [t.dtype for t in floats] + ([floor] if floor else []))
                args = tuple(a.to(dtype) if i in positions and isinstance(a, torch.Tensor) and a.dtype.is_floating_point
                             else a for i, a in enumerate(args))
            with torch.autocast(_device, enabled=False):
                return op(*args)

        _lib.impl(name, kernel, key)
