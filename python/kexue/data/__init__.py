"""Training data for the models, all available offline: 2-D toy densities, the 8×8 digits
bundled with scikit-learn, and user ``.npy`` image files. ``get_dataset`` is the one entry point
the command line and the training loops use; the loaders beneath it are public for direct use.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kexue.data.images import DIGITS_LEVELS, load_digits, load_npy_images
from kexue.data.vectors import load_npy_vectors
from kexue.data.toys import TOY_NAMES, toy_2d, toy_entropy, toy_log_prob

# Toy set sizes when get_dataset is given no n.
TOY_TRAIN_SIZE = 20000
TOY_TEST_SIZE = 5000
# get_dataset draws toy train sets with seed s in [0, 2**31) and test sets with s + 2**31: toy_2d
# seeds live in [0, 2**32), so the two ranges are disjoint and no train set ever shares a stream
# with any test set.
TOY_TEST_SEED_OFFSET = 2**31
# Fraction of a .npy file's images (taken from the front) that form its "train" split.
NPY_TRAIN_FRACTION = 0.9


@dataclass
class Dataset:
    """A whole data set in memory: these sets are small, so no loader machinery is needed.

    ``n_levels`` is the number of discrete values per element (images to dequantise), or None
    for continuous data (toys, float images).
    """

    x: torch.Tensor
    labels: torch.Tensor | None
    n_levels: int | None
    name: str

    @property
    def event_shape(self) -> torch.Size:
        """Shape of one example, e.g. (2,) for toys or (1, 8, 8) for digits."""
        return self.x.shape[1:]


def _first(
    x: torch.Tensor, labels: torch.Tensor | None, n: int | None, what: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if n is None:
        return x, labels
    if n < 0 or n > len(x):
        raise ValueError(f"n={n} is out of range: {what} has {len(x)} examples")
    return x[:n], None if labels is None else labels[:n]


def _toy(name: str, split: str, n: int | None, seed: int) -> Dataset:
    if split not in ("train", "test"):
        raise ValueError(f"toy densities have splits 'train' and 'test'; got {split!r}")
    if not 0 <= seed < TOY_TEST_SEED_OFFSET:
        raise ValueError(f"seed must be in [0, 2**31) for toy densities; got {seed}")
    if split == "train":
        x = toy_2d(name, TOY_TRAIN_SIZE if n is None else n, seed=seed)
    else:
        x = toy_2d(name, TOY_TEST_SIZE if n is None else n, seed=seed + TOY_TEST_SEED_OFFSET)
    return Dataset(x=x, labels=None, n_levels=None, name=name)


def _npy(path: str, split: str, n: int | None) -> Dataset:
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all'; got {split!r}")
    if np.load(path, mmap_mode="r", allow_pickle=False).ndim == 2:
        images, n_levels = load_npy_vectors(path), None  # [N, D] vectors, e.g. embeddings
    else:
        images, n_levels = load_npy_images(path)
    n_train = int(len(images) * NPY_TRAIN_FRACTION)
    part = {"train": images[:n_train], "test": images[n_train:], "all": images}[split]
    if len(part) == 0:
        raise ValueError(f"{path}: too few images ({len(images)}) for a non-empty {split!r} split")
    x, _ = _first(part, None, n, f"the {split!r} split of {path}")
    return Dataset(x=x, labels=None, n_levels=n_levels, name=Path(path).stem)


def get_dataset(
    name_or_path: str | os.PathLike, split: str = "train", *, n: int | None = None, seed: int = 0
) -> Dataset:
    """The data set called ``name_or_path``, split ``split``.

    - a toy name (see TOY_NAMES): ``n`` fresh samples (default 20000 for "train", 5000 for
      "test"); "train" uses ``seed`` itself (so it equals ``toy_2d(name, n, seed=seed)``) and
      "test" uses ``seed + 2**31``, so the two never coincide (seed must be < 2**31).
    - "digits": the fixed scikit-learn digits split ("train", "test" or "all"), uint8 images.
    - a path ending in ".npy": images (see ``load_npy_images``) or, for a 2-D float array,
      vectors [N, D] such as sentence embeddings (``load_npy_vectors``); "train" is the first
      90%, "test" the last 10%, "all" everything (the file's order decides, so shuffle it
      beforehand if it is sorted).

    For digits and .npy files, ``n`` keeps the first n examples of the split and ``seed`` is
    unused (their splits are fixed).
    """
    if isinstance(name_or_path, str) and name_or_path in TOY_NAMES:
        return _toy(name_or_path, split, n, seed)
    if name_or_path == "digits":
        images, labels = load_digits(split)
        x, labels = _first(images, labels, n, f"the digits {split!r} split")
        return Dataset(x=x, labels=labels, n_levels=DIGITS_LEVELS, name="digits")
    path = os.fspath(name_or_path)
    if path.endswith(".npy"):
        return _npy(path, split, n)
    raise ValueError(
        f"unknown data set {path!r}; choose a toy density ({', '.join(TOY_NAMES)}), "
        "'digits', or a path to a .npy file of images"
    )


__all__ = [
    "TOY_NAMES",
    "DIGITS_LEVELS",
    "Dataset",
    "get_dataset",
    "toy_2d",
    "toy_entropy",
    "toy_log_prob",
    "load_digits",
    "load_npy_images",
    "load_npy_vectors",
]
