"""A word vocabulary built from a training corpus, for models trained from scratch (no
pretrained tokenizer is available offline). Tokens are lower-cased runs of letters/digits, single
punctuation marks, and single CJK characters (Chinese has no spaces; a character is its
natural unit)."""
from __future__ import annotations

import re
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence

import torch

Tensor = torch.Tensor

PAD, UNK = "<pad>", "<unk>"
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")


def tokenize(text: str) -> List[str]:
    """``"Hello, 世界!"`` → ``["hello", ",", "世", "界", "!"]``."""
    if not isinstance(text, str):
        raise TypeError(f"tokenize: expects a string, got {type(text).__name__}")
    return _TOKEN.findall(text.lower())


class Vocabulary:
    """Token ↔ id, with ``<pad>`` = 0 and ``<unk>`` = 1. ``encode`` pads a batch of texts into a
    LongTensor [N, L]; a model finds its padding by ``ids != 0``."""

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tokens[:2] != [PAD, UNK]:
            raise ValueError(f"Vocabulary: the first two tokens must be {PAD!r} and {UNK!r}, got {tokens[:2]}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("Vocabulary: tokens must be distinct")
        self.tokens = tokens
        self.index: Dict[str, int] = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1, max_size: Optional[int] = None) -> "Vocabulary":
        """The tokens of ``texts`` seen at least ``min_count`` times, most frequent first (ties in
        order of first appearance), at most ``max_size`` entries including the two specials."""
        if min_count < 1:
            raise ValueError(f"Vocabulary.build: min_count must be >= 1, got {min_count}")
        if max_size is not None and max_size < 2:
            raise ValueError(f"Vocabulary.build: max_size must leave room for {PAD!r} and {UNK!r}, got {max_size}")
        counts = Counter(t for text in texts for t in tokenize(text))
        kept = [t for t, c in counts.most_common() if c >= min_count]
        if max_size is not None:
            kept = kept[: max_size - 2]
        return cls([PAD, UNK] + kept)

    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self, text: str) -> List[int]:
        return [self.index.get(t, 1) for t in tokenize(text)]

    def encode(self, texts: Sequence[str], max_len: Optional[int] = None) -> Tensor:
        """Ids [N, L] padded with 0 to the longest text (cut at ``max_len``). A text with no
        token becomes a single ``<unk>``, so every row has at least one real position."""
        if isinstance(texts, str):
            raise TypeError("Vocabulary.encode: expects a sequence of texts, got a single string")
        if max_len is not None and max_len < 1:
            raise ValueError(f"Vocabulary.encode: max_len must be >= 1, got {max_len}")
        rows = [(self.ids(t) or [1])[:max_len] for t in texts]
        out = torch.zeros(len(rows), max((len(r) for r in rows), default=1), dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    def state_dict(self) -> Dict[str, List[str]]:
        return {"tokens": list(self.tokens)}

    @classmethod
    def from_state_dict(cls, state: Dict[str, List[str]]) -> "Vocabulary":
        return cls(state["tokens"])


__all__ = ["PAD", "UNK", "Vocabulary", "tokenize"]
