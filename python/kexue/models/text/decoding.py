"""Bookkeeping of autoregressive decoding for the packed-row models (UniLM, UniVAE): which token
each row generated at each step, where it goes in the row, which rows have ended, and the total
log-probability of each row's tokens. Greedy decoding, sampling and beam search differ only in how
they pick the next class; this state is the same for all three (beam search also reorders rows).

Rows grow in place: row r's generated tokens go to indices ``prefix[r], prefix[r] + 1, ...`` of
the token buffer, which must have room for ``max_len`` of them. A finished row (its last class
was END) stops growing: later steps write PAD past its end and add nothing to its total.
"""
from __future__ import annotations

from typing import Optional

import torch

from kexue.models.text.packing import NO_TOKEN, PAD, Generated, classes_to_tokens

Tensor = torch.Tensor


class DecodeState:
    """Decoding state of N rows: ``tokens`` [N, W] the buffer (modified in place), ``prefix``
    [N] the index of each row's first generated token, ``vocab_size`` V (class V is END)."""

    def __init__(self, tokens: Tensor, prefix: Tensor, max_len: int, vocab_size: int):
        rows, device = tokens.shape[0], tokens.device
        self.tokens, self.prefix, self.vocab_size = tokens, prefix, vocab_size
        self.classes = torch.full((rows, max_len), NO_TOKEN, dtype=torch.long, device=device)
        self.count = torch.zeros(rows, dtype=torch.long, device=device)  # tokens generated, END included
        self.finished = torch.zeros(rows, dtype=torch.bool, device=device)
        self.total = torch.zeros(rows, dtype=torch.float32, device=device)

    @property
    def lengths(self) -> Tensor:
        """Real tokens per row so far, [N] (the attention's key lengths)."""
        return self.prefix + self.count

    def append(self, step: int, cls: Tensor, log_p: Tensor) -> None:
        """Add class ``cls`` [N] with log-probability ``log_p`` [N] to every unfinished row."""
        active = ~self.finished
        self.total += torch.where(active, log_p.to(self.total.dtype), torch.zeros_like(self.total))
        tok = torch.where(active, classes_to_tokens(cls, self.vocab_size), torch.full_like(cls, PAD))
        self.tokens.scatter_(1, self.lengths[:, None], tok[:, None])
        self.classes[:, step] = torch.where(active, cls, torch.full_like(cls, NO_TOKEN))
        self.count += active.long()
        self.finished |= active & (cls == self.vocab_size)

    def reorder(self, rows: Tensor) -> None:
        """Keep rows ``rows`` [N] (beam search: each new hypothesis continues its parent)."""
        self.tokens, self.prefix = self.tokens[rows], self.prefix[rows]
        self.classes, self.count = self.classes[rows], self.count[rows]
        self.finished, self.total = self.finished[rows], self.total[rows]

    def done(self) -> bool:
        """Whether every row has ended (one host synchronisation)."""
        return bool(self.finished.all())

    def result(self, rows: Optional[Tensor] = None) -> Generated:
        """The generated content ids of ``rows`` (default all), END dropped."""
        sel = slice(None) if rows is None else rows
        classes, count, finished = self.classes[sel], self.count[sel], self.finished[sel]
        n_content = count - finished.long()
        j = torch.arange(classes.shape[1], device=classes.device)[None, :]
        ids = torch.where(j < n_content[:, None], classes, torch.full_like(classes, NO_TOKEN))
        return Generated(ids, n_content, finished, self.total[sel])


__all__ = ["DecodeState"]
