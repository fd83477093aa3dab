"""Text data of fixed-length lines (e.g. five-character quatrains, one poem per line) as
character ids, for models that read and write whole lines at once (the poetry CNN-VAE).

A file becomes a ``Vocabulary`` (its distinct characters, sorted by code point, so the ids depend
on the file's character set only) and a LongTensor ``[N, L]`` of ids; the train/test split is a
fixed seeded permutation of the lines, like the digits' split.
"""
from __future__ import annotations

import os
from typing import Iterable, List, Sequence, Tuple, Union

import numpy as np
import torch

TEXT_SPLITS = ("train", "test", "all")
# Fraction of the lines that form the "test" split: the last 5% of a seeded permutation of the
# lines (a permutation, not the file's tail, because files are often sorted, e.g. Tang poems
# before Song ones).
TEXT_TEST_FRACTION = 0.05
# Seed of that permutation. numpy's legacy RandomState promises a stream that never changes, so
# the split is the same on every machine and version. Do not change it.
TEXT_SPLIT_SEED = 0


class Vocabulary:
    """The characters of a text corpus and their ids: ``chars[i]`` has id ``i``.

    ``encode`` maps a string (or a list of strings of one length) to ids, ``decode`` maps ids
    back; ``decode(encode(s)) == s`` for every string over the vocabulary.
    """

    def __init__(self, chars: Union[str, Iterable[str]]):
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"Vocabulary: every entry must be one character, got {c!r}")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"Vocabulary: characters must be distinct; repeated: {dup[:10]}")
        if not chars:
            raise ValueError("Vocabulary: needs at least one character")
        self.chars: Tuple[str, ...] = tuple(chars)
        self._ids = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "Vocabulary":
        """The distinct characters of ``texts``, sorted by code point."""
        return cls(sorted(set().union(*map(set, texts))))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.chars == other.chars

    def __repr__(self) -> str:
        head = "".join(self.chars[:20])
        return f"Vocabulary({len(self)} characters: {head!r}{'...' if len(self) > 20 else ''})"

    def encode(self, text: Union[str, Sequence[str]]) -> torch.Tensor:
        """Ids of one string (LongTensor [L]) or of a list of equal-length strings ([N, L])."""
        if isinstance(text, str):
            return torch.tensor([self._id(c, text) for c in text], dtype=torch.long)
        texts = list(text)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("Vocabulary.encode: expected a string or a list of strings")
        lengths = sorted({len(t) for t in texts})
        if len(lengths) > 1:
            raise ValueError(f"Vocabulary.encode: the strings must have one length, got lengths {lengths}")
        width = lengths[0] if lengths else 0
        ids = [[self._id(c, t) for c in t] for t in texts]
        return torch.tensor(ids, dtype=torch.long).view(len(texts), width)

    def _id(self, c: str, text: str) -> int:
        try:
            return self._ids[c]
        except KeyError:
            raise ValueError(f"Vocabulary.encode: character {c!r} (in {text!r}) is not in the vocabulary") from None

    def decode(self, ids: torch.Tensor) -> Union[str, List[str]]:
        """The string of ids [L], or the list of strings of ids [N, L]."""
        if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype.is_complex \
                or ids.dtype == torch.bool:
            raise TypeError(f"Vocabulary.decode: ids must be an integer tensor, got "
                            f"{ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__}")
        if ids.dim() not in (1, 2):
            raise ValueError(f"Vocabulary.decode: ids must have shape [L] or [N, L], got {list(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self)):
            raise ValueError(f"Vocabulary.decode: ids must lie in [0, {len(self)}), got values in "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        rows = ids.cpu().tolist()
        if ids.dim() == 1:
            return "".join(self.chars[i] for i in rows)
        return ["".join(self.chars[i] for i in row) for row in rows]


def read_lines(path: Union[str, os.PathLike]) -> List[str]:
    """The lines of a UTF-8 text file, all of one length (a ValueError names the first line
    that differs). Line ends (``\\n`` or ``\\r\\n``) are not part of a line; a file's final
    line end does not start another line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such text file")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not lines:
        raise ValueError(f"{path}: the file has no lines")
    width = len(lines[0])
    if width == 0:
        raise ValueError(f"{path}: line 1 is empty; every line must hold one example of a fixed length")
    for i, line in enumerate(lines):
        if len(line) != width:
            raise ValueError(f"{path}: line {i + 1} has {len(line)} characters, but line 1 has {width}; "
                             "every line must have the same length")
    return lines


def split_indices(n: int, split: str) -> np.ndarray:
    """Indices of the lines of ``split`` among ``n``: "test" is the last 5% (at least one line)
    of a permutation seeded with TEXT_SPLIT_SEED, "train" the rest, "all" every line in order."""
    if split not in TEXT_SPLITS:
        raise ValueError(f"split must be one of {', '.join(TEXT_SPLITS)}; got {split!r}")
    if split == "all":
        return np.arange(n)
    if n < 2:
        raise ValueError(f"a text file needs at least 2 lines for a train/test split, got {n}")
    n_test = max(1, int(round(n * TEXT_TEST_FRACTION)))
    order = np.random.RandomState(TEXT_SPLIT_SEED).permutation(n)
    return order[: n - n_test] if split == "train" else order[n - n_test:]


def load_text_lines(path: Union[str, os.PathLike], split: str = "all") -> Tuple[torch.Tensor, Vocabulary]:
    """``(ids, vocabulary)`` of a UTF-8 file of equal-length lines: ids is a LongTensor [N, L]
    of the lines of ``split`` ("train", "test" or "all"); the vocabulary is built from the whole
    file, so it is the same for every split and covers both."""
    lines = read_lines(path)
    idx = split_indices(len(lines), split)
    vocab = Vocabulary.from_texts(lines)
    return vocab.encode([lines[i] for i in idx]), vocab


__all__ = ["TEXT_SPLITS", "TEXT_TEST_FRACTION", "Vocabulary", "load_text_lines", "read_lines", "split_indices"]
