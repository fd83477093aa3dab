"""Random draws that torch.compile can trace with symbolic sizes: torch.randn/rand(size,
generator=None) route to an overload that wants concrete sizes (the batch size is symbolic under
dynamic shapes), so the generator is passed only when there is one."""
from __future__ import annotations

from typing import Optional

import torch


def _gen(generator: Optional[torch.Generator]) -> dict:
    return {} if generator is None else {"generator": generator}


def randn(*size, generator: Optional[torch.Generator] = None, **kwargs) -> torch.Tensor:
    return torch.randn(*size, **_gen(generator), **kwargs)


def rand(*size, generator: Optional[torch.Generator] = None, **kwargs) -> torch.Tensor:
    return torch.rand(*size, **_gen(generator), **kwargs)


def randint(high: int, size, generator: Optional[torch.Generator] = None, **kwargs) -> torch.Tensor:
    return torch.randint(high, size, **_gen(generator), **kwargs)
