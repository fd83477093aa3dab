"""Representation-based ("特征式") sentence matching trained with CoSENT (posts CoSENT（一）/（二）):
each sentence is encoded on its own into one vector, and a pair is scored by the cosine of its two
vectors, so a corpus can be embedded once and searched by vector similarity.

``BiEncoder(encoder, pooling)`` wraps any token encoder ``ids [B, L] → states [B, L, D]`` (0 is
padding); ``ConvEncoder`` is a small trainable default (word embeddings and residual 1-D
convolutions) for training from scratch, as no pretrained model is available offline."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kexue.models.text.cosent import DEFAULT_SCALE, cosent_loss, pair_cosine
from kexue.models.text.vocab import Vocabulary

Tensor = torch.Tensor

POOLINGS = ("mean", "max", "first")


def check_ids(ids: Tensor, name: str = "ids") -> None:
    if not isinstance(ids, Tensor) or ids.dtype != torch.long or ids.dim() != 2:
        got = f"{ids.dtype} {list(ids.shape)}" if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"{name}: expects token ids as a LongTensor [B, L] (0 = padding), got {got}")


def trim_padding(ids: Tensor) -> Tensor:
    """Drop the trailing columns that are padding in every row (batches cut from a corpus padded
    to its longest sentence)."""
    used = (ids != 0).any(0)
    length = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
    return ids[:, :length]


def pool(states: Tensor, mask: Tensor, how: str = "mean") -> Tensor:
    """One vector per sentence from token states [B, L, D] and mask [B, L] (True = token)."""
    if how == "mean":
        m = mask.unsqueeze(-1).to(states.dtype)
        return (states * m).sum(1) / m.sum(1).clamp_min(1.0)
    if how == "max":
        return states.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    if how == "first":
        return states[:, 0]
    raise ValueError(f"pool: how must be one of {POOLINGS}, got {how!r}")


class ConvEncoder(nn.Module):
    """Token embeddings followed by ``layers`` residual blocks ``h + GELU(conv1d(h))`` (kernel
    ``kernel_size``, 'same' padding); padded positions are zeroed before every convolution so
    that they never leak into real tokens. ``layers=0`` is a plain bag of word vectors."""

    def __init__(self, vocab_size: int, dim: int = 128, layers: int = 1, kernel_size: int = 3, dropout: float = 0.1):
        super().__init__()
        if vocab_size < 2 or dim < 1 or layers < 0 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ConvEncoder: needs vocab_size >= 2, dim >= 1, layers >= 0 and an odd kernel_size, "
                             f"got {vocab_size}, {dim}, {layers}, {kernel_size}")
        self.vocab_size, self.dim = vocab_size, dim
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        nn.init.normal_(self.embed.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: Tensor) -> Tensor:
        check_ids(ids, "ConvEncoder")
        keep = (ids != 0).unsqueeze(-1)
        h = self.dropout(self.embed(ids))
        for conv in self.convs:
            h = h * keep
            h = h + self.dropout(F.gelu(conv(h.transpose(1, 2)).transpose(1, 2)))
        return h


class BiEncoder(nn.Module):
    """Sentence vectors ``pool(encoder(ids))`` compared by cosine, trained with CoSENT.

    Batches are ``(ids_a [B, La], ids_b [B, Lb], gold [B])``; ``loss`` returns the CoSENT loss
    of the batch's cosines against its gold scores (scale λ = ``scale``). ``vocab`` (optional)
    lets ``encode_texts`` embed raw sentences."""

    def __init__(self, encoder: nn.Module, pooling: str = "mean", scale: float = DEFAULT_SCALE,
                 vocab: Optional[Vocabulary] = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"BiEncoder: pooling must be one of {POOLINGS}, got {pooling!r}")
        self.encoder, self.pooling, self.scale, self.vocab = encoder, pooling, float(scale), vocab

    def forward(self, ids: Tensor) -> Tensor:
        """Sentence vectors [B, D]."""
        check_ids(ids, "BiEncoder")
        return pool(self.encoder(ids), ids != 0, self.pooling)

    def similarity(self, ids_a: Tensor, ids_b: Tensor) -> Tensor:
        return pair_cosine(self(ids_a), self(ids_b))

    def loss(self, batch) -> Dict[str, Tensor]:
        ids_a, ids_b, gold = batch
        return {"loss": cosent_loss(self.similarity(ids_a, ids_b), gold, self.scale)}

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Sentence vectors [N, D] of raw texts (eval mode, in batches)."""
        if self.vocab is None:
            raise RuntimeError("BiEncoder.encode_texts: this model has no vocabulary; pass vocab= when building it")
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        out = [self(trim_padding(self.vocab.encode(texts[i : i + batch_size])).to(device))
               for i in range(0, len(texts), batch_size)]
        self.train(was)
        return torch.cat(out) if out else torch.empty(0, 0)


def build_biencoder(vocab: Vocabulary, dim: int = 128, layers: int = 1, kernel_size: int = 3, dropout: float = 0.1,
                    pooling: str = "mean", scale: float = DEFAULT_SCALE) -> BiEncoder:
    """The default bi-encoder over ``vocab``: ``ConvEncoder`` + pooling."""
    return BiEncoder(ConvEncoder(len(vocab), dim, layers, kernel_size, dropout), pooling, scale, vocab)


__all__ = ["BiEncoder", "ConvEncoder", "POOLINGS", "build_biencoder", "check_ids", "pool", "trim_padding"]
