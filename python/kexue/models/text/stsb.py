"""STS-B style evaluation (MODELS.md A5, H1): read sentence pairs with gold similarity scores,
and score a model by the Spearman correlation between its similarities and the gold scores —
the measure of the BERT-whitening and CoSENT posts.

File format (``load_sts_tsv``): one pair per line, ``score<TAB>sentence1<TAB>sentence2``, UTF-8,
no header. Where the files live is up to the caller (nothing here knows a data directory)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch

from kexue.models.text.similarity import cosine_spearman, spearman
from kexue.models.text.whitening import Whitening

Tensor = torch.Tensor

SPLITS = ("train", "dev", "test")


@dataclass
class StsPairs:
    """Sentence pairs ``first[i]``, ``second[i]`` with gold score ``scores[i]`` (float64 [N])."""

    first: List[str]
    second: List[str]
    scores: Tensor

    def __len__(self) -> int:
        return len(self.first)


def load_sts_tsv(path: Union[str, os.PathLike]) -> StsPairs:
    """Pairs from a ``score<TAB>sentence1<TAB>sentence2`` file; a malformed line raises a
    ValueError naming the file and line."""
    path = Path(path)
    first: List[str] = []
    second: List[str] = []
    scores: List[float] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 3:
                raise ValueError(f"{path}:{lineno}: expected 3 tab-separated fields (score, sentence1, sentence2), "
                                 f"got {len(fields)}")
            try:
                score = float(fields[0])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: the first field must be a number, got {fields[0]!r}") from None
            scores.append(score)
            first.append(fields[1])
            second.append(fields[2])
    if not scores:
        raise ValueError(f"{path}: no sentence pairs")
    return StsPairs(first, second, torch.tensor(scores, dtype=torch.float64))


def load_sts_dir(directory: Union[str, os.PathLike], splits: Sequence[str] = SPLITS) -> Dict[str, StsPairs]:
    """``{split: pairs}`` from ``sts-<split>.tsv`` files in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"load_sts_dir: {directory} is not a directory")
    missing = [s for s in splits if not (directory / f"sts-{s}.tsv").is_file()]
    if missing:
        raise ValueError(f"load_sts_dir: {directory} lacks " + ", ".join(f"sts-{s}.tsv" for s in missing))
    return {s: load_sts_tsv(directory / f"sts-{s}.tsv") for s in splits}


def evaluate_sts(embed_a: Tensor, embed_b: Tensor, gold: Tensor, whitening: Optional[Whitening] = None) -> float:
    """Spearman ρ between cos(embed_a[i], embed_b[i]) and ``gold`` — after the (fitted)
    ``whitening`` transform when one is given (BERT-whitening: the post fits it on the sentence
    vectors of a corpus, then compares whitened vectors by cosine)."""
    if whitening is not None:
        embed_a, embed_b = whitening.transform(embed_a), whitening.transform(embed_b)
    return cosine_spearman(embed_a, embed_b, torch.as_tensor(gold))


def spearman_eval(model_or_fn: Union[Callable[[Sequence[str]], Tensor], torch.nn.Module], pairs: StsPairs,
                  gold: Optional[Tensor] = None, whitening: Optional[Whitening] = None) -> float:
    """Spearman ρ of a model's pair similarities against the gold scores of ``pairs`` (or ``gold``).

    ``model_or_fn`` is a function or module mapping a list of sentences to vectors [N, D] (a
    ``BiEncoder``'s ``encode_texts`` is used when it has one), compared by cosine; or a pair
    scorer with ``score_texts(first, second) -> [N]`` (a cross-encoder wrapper)."""
    gold = pairs.scores if gold is None else torch.as_tensor(gold)
    if gold.numel() != len(pairs):
        raise ValueError(f"spearman_eval: {len(pairs)} pairs but {gold.numel()} gold scores")
    if hasattr(model_or_fn, "score_texts"):
        if whitening is not None:
            raise ValueError("spearman_eval: whitening applies to sentence vectors, not to a pair scorer")
        return spearman(model_or_fn.score_texts(pairs.first, pairs.second).double(), gold)
    embed = getattr(model_or_fn, "encode_texts", model_or_fn)
    if not callable(embed):
        raise TypeError(f"spearman_eval: expects a sentence-embedding function or model, got {type(model_or_fn).__name__}")
    return evaluate_sts(embed(pairs.first), embed(pairs.second), gold, whitening)


__all__ = ["SPLITS", "StsPairs", "evaluate_sts", "load_sts_dir", "load_sts_tsv", "spearman_eval"]
