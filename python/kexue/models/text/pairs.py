"""Sentence-pair data as id tensors, and the small training/scoring loops shared by the
bi-encoder and the cross-encoder (any model with ``loss((ids_a, ids_b, gold))`` and
``similarity(ids_a, ids_b)``)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import nn

from kexue.models.text.biencoder import trim_padding
from kexue.models.text.vocab import Vocabulary

Tensor = torch.Tensor


@dataclass
class PairData:
    """``ids_a`` [N, La] and ``ids_b`` [N, Lb] (0-padded token ids) with ``gold`` [N] scores."""

    ids_a: Tensor
    ids_b: Tensor
    gold: Tensor

    def __post_init__(self):
        n = self.gold.shape[0] if self.gold.dim() == 1 else -1
        if self.ids_a.dim() != 2 or self.ids_b.dim() != 2 or self.ids_a.shape[0] != n or self.ids_b.shape[0] != n:
            raise ValueError(f"PairData: expects ids_a [N, La], ids_b [N, Lb] and gold [N], got "
                             f"{list(self.ids_a.shape)}, {list(self.ids_b.shape)}, {list(self.gold.shape)}")

    @classmethod
    def from_texts(cls, vocab: Vocabulary, first: Sequence[str], second: Sequence[str], gold: Tensor,
                   max_len: Optional[int] = 64) -> "PairData":
        return cls(vocab.encode(first, max_len), vocab.encode(second, max_len), torch.as_tensor(gold, dtype=torch.float32))

    def __len__(self) -> int:
        return self.gold.shape[0]

    def batch(self, index: Tensor, device=None):
        """The batch ``(ids_a, ids_b, gold)`` of the rows ``index``, trimmed of all-padding columns."""
        out = (trim_padding(self.ids_a[index]), trim_padding(self.ids_b[index]), self.gold[index])
        return tuple(t.to(device) for t in out) if device is not None else out


def train_pairs(model: nn.Module, data: PairData, steps: int, batch_size: int = 64, lr: float = 1e-3,
                generator: Optional[torch.Generator] = None, time_limit: Optional[float] = None,
                weight_decay: float = 0.0) -> List[float]:
    """Adam on ``model.loss`` over batches drawn as shuffled epochs of ``data`` (reproducible
    for a seeded ``generator``). Stops after ``steps`` steps or ``time_limit`` seconds, whichever
    comes first; returns the loss of every step and leaves the model in eval mode."""
    if steps < 0 or batch_size < 2:
        raise ValueError(f"train_pairs: needs steps >= 0 and batch_size >= 2 (CoSENT ranks pairs within a batch), "
                         f"got steps={steps}, batch_size={batch_size}")
    if len(data) < batch_size:
        raise ValueError(f"train_pairs: the data has {len(data)} pairs, fewer than one batch of {batch_size}")
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    losses: List[float] = []
    order, pos = torch.randperm(len(data), generator=generator), 0
    start = time.perf_counter()
    for _ in range(steps):
        if pos + batch_size > len(data):
            order, pos = torch.randperm(len(data), generator=generator), 0
        batch = data.batch(order[pos : pos + batch_size], device)
        pos += batch_size
        out = model.loss(batch)
        loss = out["loss"] if isinstance(out, dict) else out
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if time_limit is not None and time.perf_counter() - start > time_limit:
            break
    model.eval()
    return losses


@torch.no_grad()
def score_pairs(model: nn.Module, data: PairData, batch_size: int = 256) -> Tensor:
    """``model.similarity`` of every pair [N] (eval mode, in batches)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model.similarity(*data.batch(torch.arange(i, min(i + batch_size, len(data))), device)[:2]).float().cpu()
           for i in range(0, len(data), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.empty(0)


__all__ = ["PairData", "score_pairs", "train_pairs"]
