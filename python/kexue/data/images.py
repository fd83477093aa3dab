"""Image data for flows: the 8×8 digits bundled with scikit-learn and user ``.npy`` arrays.

Images stay discrete where they are discrete (integer tensors plus ``n_levels``, the number of
possible pixel values): a flow needs to know the quantisation to dequantise and to report
bits per dimension, and converting early would lose that information.
"""
from __future__ import annotations

import os

import numpy as np
import torch

# The digits' pixels are counts 0..16 (4×4 blocks of a 32×32 bitmap), hence 17 levels.
DIGITS_LEVELS = 17
# Size of the fixed digits test split: the last DIGITS_TEST_SIZE of a seeded permutation.
DIGITS_TEST_SIZE = 297
# Seed of that permutation. It uses numpy's legacy RandomState, whose stream numpy promises never
# to change, so the split is the same on every machine and every version. Do not change either.
DIGITS_SPLIT_SEED = 0

DIGITS_SPLITS = ("train", "test", "all")
# Channel counts recognised when guessing the layout of a 4-D array (gray, RGB, RGBA).
_CHANNEL_COUNTS = (1, 3, 4)


def _digits_split_indices(n: int, split: str) -> np.ndarray:
    order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(n)
    if split == "train":
        return order[: n - DIGITS_TEST_SIZE]
    if split == "test":
        return order[n - DIGITS_TEST_SIZE :]
    return np.arange(n)


def load_digits(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 8×8 handwritten digits shipped inside scikit-learn (no download needed).

    Returns (images uint8 [N, 1, 8, 8] with values 0..16, labels long [N]). The split is fixed:
    "test" is the last 297 digits of a permutation seeded with 0, "train" the other 1500, and
    "all" all 1797 in scikit-learn's order.
    """
    if split not in DIGITS_SPLITS:
        raise ValueError(f"split must be one of {', '.join(DIGITS_SPLITS)}; got {split!r}")
    try:
        from sklearn.datasets import load_digits as _sklearn_digits
    except ImportError as e:
        raise ImportError(
            "kexue needs scikit-learn for the digits data (it ships them, so nothing is "
            "downloaded): pip install scikit-learn"
        ) from e
    bunch = _sklearn_digits()
    idx = _digits_split_indices(len(bunch.target), split)
    images = torch.from_numpy(bunch.images[idx].astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target[idx].astype(np.int64))
    return images, labels


def _to_nchw(a: np.ndarray, path: str) -> np.ndarray:
    if a.ndim == 3:
        return a[:, None]
    if a.ndim != 4:
        raise ValueError(
            f"{path}: expected images as [N, H, W], [N, C, H, W] or [N, H, W, C]; "
            f"got an array of shape {a.shape}"
        )
    if a.shape[1] in _CHANNEL_COUNTS:
        return a
    if a.shape[3] in _CHANNEL_COUNTS:
        return a.transpose(0, 3, 1, 2)
    raise ValueError(
        f"{path}: cannot find the channel axis of shape {a.shape}: neither dim 1 (channels-first) "
        f"nor dim 3 (channels-last) is one of {_CHANNEL_COUNTS}"
    )


def load_npy_images(path: str | os.PathLike, n_levels: int | None = None) -> tuple[torch.Tensor, int | None]:
    """Images from a user ``.npy`` file as (images [N, C, H, W], n_levels).

    Layout: [N, H, W] gets a channel dim; a 4-D array is channels-first [N, C, H, W] when its
    dim 1 is 1, 3 or 4, otherwise channels-last [N, H, W, C] when its dim 3 is 1, 3 or 4 (so an
    ambiguous [N, 3, H, 3] counts as channels-first).
    Values: integers must be non-negative; uint8 stays uint8 with n_levels = 256, other integer
    types become int64 with n_levels = max + 1. Floats must lie in [0, 1] (no NaN); they become
    float32 with n_levels = None, i.e. already continuous.
    ``n_levels`` overrides the inferred number of levels of integer images (e.g. 17 for uint8
    images whose values are 0..16, which would otherwise count as 256 levels); it must exceed
    the largest value, and float images take none.
    Anything else raises ValueError naming the file and the problem.
    """
    path = os.fspath(path)
    if n_levels is not None and (isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2):
        raise ValueError(f"n_levels (--levels) must be an integer >= 2, got {n_levels!r}")
    try:
        a = np.load(path, allow_pickle=False)
    except ValueError as e:  # e.g. an object array, which would need unsafe unpickling
        raise ValueError(f"{path}: not a plain numeric .npy array ({e})") from e
    if not isinstance(a, np.ndarray):  # np.load returns an archive for .npz files
        raise ValueError(f"{path}: expected a single .npy array, got {type(a).__name__}")
    a = _to_nchw(a, path)
    if a.shape[0] == 0:
        raise ValueError(f"{path}: the array holds no images (shape {a.shape})")
    if a.dtype.kind in "iu":
        if a.min() < 0:
            raise ValueError(f"{path}: integer pixel values must be non-negative; min is {a.min()}")
        if n_levels is not None and a.max() >= n_levels:
            raise ValueError(f"{path}: --levels {n_levels} is too few: the images hold values up to {a.max()} "
                             f"(levels 0..{n_levels - 1})")
        if a.dtype == np.uint8:
            return torch.from_numpy(np.ascontiguousarray(a)), n_levels or 256
        if a.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{path}: pixel values up to {a.max()} do not fit in int64")
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)), n_levels or int(a.max()) + 1
    if n_levels is not None:
        raise ValueError(f"{path}: --levels applies to integer images; these are {a.dtype} "
                         "(float images in [0, 1] are continuous)")
    if a.dtype.kind == "f":
        if np.isnan(a).any():
            raise ValueError(f"{path}: float images contain NaN")
        lo, hi = a.min(), a.max()
        if lo < 0 or hi > 1:
            raise ValueError(
                f"{path}: float images must lie in [0, 1]; found values in [{lo}, {hi}] "
                "(save integer pixels as an integer array instead)"
            )
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), None
    raise ValueError(
        f"{path}: unsupported dtype {a.dtype}; use an integer array (levels) or floats in [0, 1]"
    )
