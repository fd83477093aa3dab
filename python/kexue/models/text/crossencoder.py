"""Interaction-based ("交互式") sentence matching, the other side of the comparison in CoSENT（二）:
both sentences go through one Transformer together (``[CLS] a [SEP] b``), so every token of one
can attend to every token of the other, and the pair's score is read from the [CLS] state. More
expressive than a bi-encoder, but each pair costs a full forward pass (no precomputed vectors).

Trained here with the same CoSENT ranking loss as the bi-encoder, on a score tanh(·) ∈ (−1, 1)
that plays the role of the cosine, so the two models differ in architecture only."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn

from kexue.models.text.biencoder import check_ids, trim_padding
from kexue.models.text.cosent import DEFAULT_SCALE, cosent_loss
from kexue.models.text.vocab import Vocabulary

Tensor = torch.Tensor


class CrossEncoder(nn.Module):
    """``vocab_size`` word ids (0 = padding) plus two special tokens [CLS] and [SEP] of its own;
    token = word + segment (first/second sentence) + position within its segment embeddings,
    ``layers`` pre-norm Transformer layers, a linear head on [CLS]. Sentences longer than
    ``max_len`` tokens are cut. ``exact_match=True`` adds the classic interaction feature of
    reading-comprehension and NLI models (DrQA, ESIM-style): an embedding of "this word also
    occurs in the other sentence", which a model trained from scratch on a few thousand pairs
    would otherwise need many steps to discover through attention. ``vocab`` (optional) lets ``score_texts`` score raw sentences."""

    def __init__(self, vocab_size: int, dim: int = 64, layers: int = 2, heads: int = 4, max_len: int = 64,
                 dropout: float = 0.1, scale: float = DEFAULT_SCALE, vocab: Optional[Vocabulary] = None,
                 exact_match: bool = True):
        super().__init__()
        if vocab_size < 2 or dim < 1 or layers < 1 or heads < 1 or dim % heads or max_len < 1:
            raise ValueError(f"CrossEncoder: needs vocab_size >= 2, layers >= 1, max_len >= 1 and dim divisible by heads, "
                             f"got vocab_size={vocab_size}, dim={dim}, layers={layers}, heads={heads}, max_len={max_len}")
        if vocab is not None and len(vocab) != vocab_size:
            raise ValueError(f"CrossEncoder: vocab has {len(vocab)} tokens but vocab_size is {vocab_size}")
        self.vocab_size, self.max_len, self.scale, self.vocab = vocab_size, max_len, float(scale), vocab
        self.cls_id, self.sep_id = vocab_size, vocab_size + 1
        self.token = nn.Embedding(vocab_size + 2, dim, padding_idx=0)
        self.segment = nn.Embedding(2, dim)
        self.position = nn.Embedding(max_len + 1, dim)
        self.match = nn.Embedding(2, dim) if exact_match else None
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def _inputs(self, ids_a: Tensor, ids_b: Tensor):
        ids_a, ids_b = ids_a[:, : self.max_len], ids_b[:, : self.max_len]
        n, dev = ids_a.shape[0], ids_a.device
        cls = torch.full((n, 1), self.cls_id, dtype=torch.long, device=dev)
        sep = torch.full((n, 1), self.sep_id, dtype=torch.long, device=dev)
        # padding may sit inside the sequence ([CLS] a <pad>.. [SEP] b <pad>..): the key mask hides
        # it and positions count within each segment, so the layout does not depend on the batch
        ids = torch.cat([cls, ids_a, sep, ids_b], 1)
        la, lb = ids_a.shape[1], ids_b.shape[1]
        segment = torch.cat([torch.zeros(la + 1, dtype=torch.long), torch.ones(lb + 1, dtype=torch.long)]).to(dev)
        position = torch.cat([torch.arange(la + 1), torch.arange(lb + 1)]).to(dev)
        return ids, segment, position

    @staticmethod
    def _exact_match(ids_a: Tensor, ids_b: Tensor) -> Tensor:
        """[B, La + Lb + 2] flags: the word at this position occurs in the other sentence (padding
        and unknown words never match; [CLS] and [SEP] are 0)."""
        same = ids_a[:, :, None] == ids_b[:, None, :]
        same &= (ids_a > 1)[:, :, None] & (ids_b > 1)[:, None, :]
        zero = torch.zeros(ids_a.shape[0], 1, dtype=torch.bool, device=ids_a.device)
        return torch.cat([zero, same.any(2), zero, same.any(1)], 1).long()

    def score(self, ids_a: Tensor, ids_b: Tensor) -> Tensor:
        """The pair scores [B] in (−1, 1)."""
        check_ids(ids_a, "CrossEncoder (first sentences)")
        check_ids(ids_b, "CrossEncoder (second sentences)")
        if ids_a.shape[0] != ids_b.shape[0]:
            raise ValueError(f"CrossEncoder: {ids_a.shape[0]} first sentences but {ids_b.shape[0]} second ones")
        ids, segment, position = self._inputs(ids_a, ids_b)
        h = self.token(ids) + self.segment(segment)[None] + self.position(position)[None]
        if self.match is not None:
            h = h + self.match(self._exact_match(ids_a[:, : self.max_len], ids_b[:, : self.max_len]))
        h = self.encoder(h, src_key_padding_mask=ids == 0)
        return torch.tanh(self.head(self.norm(h[:, 0])).squeeze(-1))

    def forward(self, ids_a: Tensor, ids_b: Tensor) -> Tensor:
        return self.score(ids_a, ids_b)

    def similarity(self, ids_a: Tensor, ids_b: Tensor) -> Tensor:
        return self.score(ids_a, ids_b)

    def loss(self, batch) -> Dict[str, Tensor]:
        ids_a, ids_b, gold = batch
        return {"loss": cosent_loss(self.score(ids_a, ids_b), gold, self.scale)}

    @torch.no_grad()
    def score_texts(self, first: Sequence[str], second: Sequence[str], batch_size: int = 256) -> Tensor:
        """Scores [N] of raw sentence pairs (eval mode, in batches)."""
        if self.vocab is None:
            raise RuntimeError("CrossEncoder.score_texts: this model has no vocabulary; pass vocab= when building it")
        if len(first) != len(second):
            raise ValueError(f"CrossEncoder.score_texts: {len(first)} first sentences but {len(second)} second ones")
        was = self.training
        self.eval()
        device = self.head.weight.device
        out = []
        for i in range(0, len(first), batch_size):
            a = trim_padding(self.vocab.encode(first[i : i + batch_size], self.max_len)).to(device)
            b = trim_padding(self.vocab.encode(second[i : i + batch_size], self.max_len)).to(device)
            out.append(self.score(a, b))
        self.train(was)
        return torch.cat(out) if out else torch.empty(0)


__all__ = ["CrossEncoder"]
