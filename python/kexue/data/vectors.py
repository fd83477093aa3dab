"""User vector data (e.g. sentence embeddings for BERT-flow) from ``.npy`` files."""
from __future__ import annotations

import os

import numpy as np
import torch


def load_npy_vectors(path: str | os.PathLike) -> torch.Tensor:
    """A float matrix [N, D] from a ``.npy`` file, as float32. Values may have any range but
    must be finite; anything else raises ValueError naming the file and the problem."""
    path = os.fspath(path)
    try:
        a = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not a plain numeric .npy array ({e})") from e
    if not isinstance(a, np.ndarray) or a.ndim != 2:
        raise ValueError(f"{path}: expected vectors as a 2-D array [N, D], got {getattr(a, 'shape', type(a).__name__)}")
    if a.dtype.kind != "f":
        raise ValueError(f"{path}: vectors must be floating point, got dtype {a.dtype}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{path}: the array holds no vectors (shape {a.shape})")
    if not np.isfinite(a).all():
        raise ValueError(f"{path}: vectors contain NaN or inf")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
