"""Training data for the models, all available offline: 2-D toy densities, the 8×8 digits
bundled with scikit-learn, user ``.npy`` image files and user ``.txt`` files of fixed-length
lines (character ids). ``get_dataset`` is the one entry point
the command line and the training loops use; the loaders beneath it are public for direct use.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kexue.data.images import DIGITS_LEVELS, load_digits, load_npy_images
from kexue.data.text import Vocabulary, load_text_lines
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
    for continuous data (toys, float images). ``vocab`` is the character vocabulary of text data
    (``x`` then holds its ids), None otherwise.
    """

    x: torch.Tensor
    labels: torch.Tensor | None
    n_levels: int | None
    name: str
    vocab: Vocabulary | None = None

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


def _npy(path: str, split: str, n: int | None, levels: int | None = None) -> Dataset:
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all'; got {split!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"unknown data set {path!r}: there is no such .npy file")
    try:
        ndim = np.load(path, mmap_mode="r", allow_pickle=False).ndim
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({e})") from e
    if ndim == 2:
        if levels is not None:
            raise ValueError(f"{path}: --levels applies to images; this file holds [N, D] vectors")
        images, n_levels = load_npy_vectors(path), None  # [N, D] vectors, e.g. embeddings
    else:
        images, n_levels = load_npy_images(path, levels)
    n_train = int(len(images) * NPY_TRAIN_FRACTION)
    part = {"train": images[:n_train], "test": images[n_train:], "all": images}[split]
    if len(part) == 0:
        raise ValueError(f"{path}: too few images ({len(images)}) for a non-empty {split!r} split")
    x, _ = _first(part, None, n, f"the {split!r} split of {path}")
    return Dataset(x=x, labels=None, n_levels=n_levels, name=Path(path).stem)


def _text(path: str, split: str, n: int | None) -> Dataset:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"unknown data set {path!r}: there is no such text file")
    ids, vocab = load_text_lines(path, split)
    x, _ = _first(ids, None, n, f"the {split!r} split of {path}")
    return Dataset(x=x, labels=None, n_levels=len(vocab), name=Path(path).stem, vocab=vocab)


# "$NAME" or "${NAME}" inside a data path.
_ENV_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def resolve_data_name(name_or_path: str | os.PathLike) -> str:
    """The name a run records for its data: toy names and "digits" as they are, a file path with
    its environment variables expanded and made absolute (so the run can be loaded from anywhere
    and resumed on the same file even when the variable changes)."""
    name = os.fspath(name_or_path)
    if name in TOY_NAMES or name == "digits":
        return name
    return os.path.abspath(_expand_env(name))


def _expand_env(path: str) -> str:
    """``path`` with its environment variables replaced: a registered model's default data may
    be a corpus the user points to (e.g. "$KEXUE_POEMS"), since the package ships none."""
    def value(m: re.Match) -> str:
        var = m.group(1) or m.group(2)
        if var not in os.environ:
            raise ValueError(f"the data path {path!r} names the environment variable {var}, which is not set; "
                             f"set {var} or pass the data path itself")
        return os.environ[var]

    return _ENV_VAR.sub(value, path)


def get_dataset(
    name_or_path: str | os.PathLike, split: str = "train", *, n: int | None = None, seed: int = 0,
    n_levels: int | None = None,
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
    - a path ending in ".txt": a UTF-8 file of equal-length lines as character ids, LongTensor
      [N, L], with its ``vocab`` (``load_text_lines``; built from the whole file) and
      ``n_levels = len(vocab)``; "test" is a fixed seeded 5% of the lines, "train" the rest,
      "all" every line in file order.

    ``n_levels`` sets the number of levels of integer ``.npy`` images (``load_npy_images``);
    any other data set rejects it (digits have 17, toys and text have none to set).

    Paths may name environment variables ("$KEXUE_POEMS"); an unset one is a ValueError.
    For digits, .npy and .txt files, ``n`` keeps the first n examples of the split and ``seed`` is
    unused (their splits are fixed).
    """
    if n_levels is not None and not os.fspath(name_or_path).endswith(".npy"):
        raise ValueError(f"--levels (n_levels) applies to integer .npy images, not to {os.fspath(name_or_path)!r}")
    if isinstance(name_or_path, str) and name_or_path in TOY_NAMES:
        return _toy(name_or_path, split, n, seed)
    if name_or_path == "digits":
        images, labels = load_digits(split)
        x, labels = _first(images, labels, n, f"the digits {split!r} split")
        return Dataset(x=x, labels=labels, n_levels=DIGITS_LEVELS, name="digits")
    path = _expand_env(os.fspath(name_or_path))
    if path.endswith(".npy"):
        return _npy(path, split, n, n_levels)
    if path.endswith(".txt"):
        return _text(path, split, n)
    raise ValueError(
        f"unknown data set {path!r}; choose a toy density ({', '.join(TOY_NAMES)}), "
        "'digits', a path to a .npy file of images, or a path to a .txt file of equal-length lines"
    )


__all__ = [
    "resolve_data_name",
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
    "load_text_lines",
    "Vocabulary",
]
