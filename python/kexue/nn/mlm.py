"""Masked language modelling (BERT, Devlin et al. 2019): the token corruption, an MLM head, and the
consistency option of the post "Dropout视角下的MLM和MAE" (MODELS.md E5).

The dropout view. BERT selects each maskable token with probability p (0.15) and replaces a selected
token by [MASK] with probability r_m (0.8), by a random token with probability r_r (0.1), and keeps it
otherwise. Seen from the embedding layer this is a dropout on the input: the embedding e_t of token
t is replaced at random, and, as with dropout, the network is trained on corrupted inputs but used
(fine-tuned, queried for features) on clean ones, a train/test mismatch. Dropout removes the mismatch
by making the test-time input the training-time expectation; here that expectation is

    E[ẽ_t] = (1 − p·(r_m + r_r))·e_t + p·r_m·e_[MASK] + p·r_r·ē,

ē the mean embedding of the tokens random replacements are drawn from (uniformly). With BERT's
numbers: 0.865·e_t + 0.12·e_[MASK] + 0.015·ē. ``consistency="expectation"`` feeds this expectation
for clean inputs outside training (special tokens, never corrupted in training, keep their own
embeddings); ``expected_embedding_weight()`` gives the same correction baked into an embedding
matrix, to start a fine-tuning run from. (The correction is derived here from the dropout analogy
as MODELS.md E5 describes it, https://kexue.fm/archives/8770; the post's own equations could not be
consulted offline. The post's MAE half, a regulariser, is not implemented.)
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from kexue import _random

Tensor = torch.Tensor

CONSISTENCY = ("none", "expectation")


def mlm_mask_tokens(tokens: Tensor, *, mask_token_id: int, random_token_ids: Tensor,
                    maskable: Optional[Tensor] = None, mask_prob: float = 0.15, mask_ratio: float = 0.8,
                    random_ratio: float = 0.1, ignore_index: int = -100,
                    generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """BERT's corruption: each position with ``maskable`` True (default all) is selected with
    probability ``mask_prob``; a selected token becomes ``mask_token_id`` with probability
    ``mask_ratio``, a token drawn uniformly from ``random_token_ids`` with probability
    ``random_ratio``, and stays itself otherwise. Returns (inputs, targets): targets hold the
    original token at selected positions and ``ignore_index`` elsewhere."""
    if not isinstance(tokens, Tensor) or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise TypeError(f"mlm_mask_tokens: tokens must be an integer tensor, got "
                        f"{tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__}")
    _check_probabilities(mask_prob, mask_ratio, random_ratio, "mlm_mask_tokens")
    if not isinstance(random_token_ids, Tensor) or random_token_ids.dtype.is_floating_point:
        raise TypeError("mlm_mask_tokens: random_token_ids must be an integer tensor of token ids")
    if random_token_ids.dim() != 1 or random_token_ids.numel() == 0:
        raise ValueError(f"mlm_mask_tokens: random_token_ids must be a non-empty 1-D tensor, "
                         f"got shape {list(random_token_ids.shape)}")
    if maskable is not None and (not isinstance(maskable, Tensor) or maskable.dtype != torch.bool
                                 or maskable.shape != tokens.shape):
        got = f"{maskable.dtype} {list(maskable.shape)}" if isinstance(maskable, Tensor) else type(maskable).__name__
        raise ValueError(f"mlm_mask_tokens: maskable must be a bool tensor of the shape of tokens "
                         f"{list(tokens.shape)}, got {got}")
    u = _random.rand((2, *tokens.shape), generator=generator, device=tokens.device)
    selected = u[0] < mask_prob
    if maskable is not None:
        selected = selected & maskable
    to_mask = selected & (u[1] < mask_ratio)
    to_random = selected & (u[1] >= mask_ratio) & (u[1] < mask_ratio + random_ratio)
    draws = _random.randint(random_token_ids.numel(), tokens.shape, generator=generator, device=tokens.device)
    inputs = torch.where(to_mask, torch.full_like(tokens, mask_token_id), tokens)
    inputs = torch.where(to_random, random_token_ids.to(tokens.dtype)[draws], inputs)
    targets = torch.where(selected, tokens, torch.full_like(tokens, ignore_index))
    return inputs, targets


def _check_probabilities(mask_prob, mask_ratio, random_ratio, who):
    for name, value in (("mask_prob", mask_prob), ("mask_ratio", mask_ratio), ("random_ratio", random_ratio)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{who}: {name} must be a probability in [0, 1], got {value!r}")
    if mask_ratio + random_ratio > 1.0 + 1e-12:
        raise ValueError(f"{who}: mask_ratio + random_ratio must be <= 1, got {mask_ratio} + {random_ratio}")


class MLMEmbeddingMasker(nn.Module):
    """Token embedding with BERT's corruption in training and, with ``consistency="expectation"``,
    the dropout-style expectation correction outside training (module docstring).

    ``forward(tokens, generator=None)``: in training mode returns (embeddings of the corrupted
    tokens, targets) — targets hold the original token where one was selected, ``ignore_index``
    elsewhere; in eval mode returns (embeddings of the clean tokens, corrected or not, None).

    Never corrupted, never corrected, never drawn as random replacements: ``mask_token_id``,
    ``special_token_ids`` and the embedding's ``padding_idx``.
    """

    def __init__(self, embedding: nn.Embedding, mask_token_id: int, *, mask_prob: float = 0.15,
                 mask_ratio: float = 0.8, random_ratio: float = 0.1, special_token_ids: Iterable[int] = (),
                 consistency: str = "none", ignore_index: int = -100):
        super().__init__()
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"MLMEmbeddingMasker: embedding must be an nn.Embedding, got {type(embedding).__name__}")
        vocab = embedding.num_embeddings
        specials = {int(mask_token_id), *(int(i) for i in special_token_ids)}
        if embedding.padding_idx is not None:
            specials.add(embedding.padding_idx)
        bad = sorted(i for i in specials if not 0 <= i < vocab)
        if bad:
            raise ValueError(f"MLMEmbeddingMasker: token ids {bad} are outside the vocabulary [0, {vocab})")
        if consistency not in CONSISTENCY:
            raise ValueError(f"MLMEmbeddingMasker: consistency must be one of {CONSISTENCY}, got {consistency!r}")
        _check_probabilities(mask_prob, mask_ratio, random_ratio, "MLMEmbeddingMasker")
        maskable = torch.ones(vocab, dtype=torch.bool)
        maskable[sorted(specials)] = False
        if not maskable.any():
            raise ValueError("MLMEmbeddingMasker: every token id is special; nothing can be masked")
        self.embedding = embedding
        self.mask_token_id, self.ignore_index, self.consistency = int(mask_token_id), ignore_index, consistency
        self.mask_prob, self.mask_ratio, self.random_ratio = float(mask_prob), float(mask_ratio), float(random_ratio)
        self.register_buffer("maskable_ids", maskable, persistent=False)
        self.register_buffer("random_token_ids", maskable.nonzero().squeeze(1), persistent=False)

    def mask(self, tokens: Tensor, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """(corrupted tokens, targets) by ``mlm_mask_tokens``."""
        self._check_tokens(tokens)
        return mlm_mask_tokens(tokens, mask_token_id=self.mask_token_id, random_token_ids=self.random_token_ids,
                               maskable=self.maskable_ids[tokens], mask_prob=self.mask_prob,
                               mask_ratio=self.mask_ratio, random_ratio=self.random_ratio,
                               ignore_index=self.ignore_index, generator=generator)

    def expectation_coefficients(self) -> Tuple[float, float, float]:
        """(c_t, c_mask, c_mean) with E[ẽ_t] = c_t·e_t + c_mask·e_[MASK] + c_mean·ē."""
        p = self.mask_prob
        return 1.0 - p * (self.mask_ratio + self.random_ratio), p * self.mask_ratio, p * self.random_ratio

    def expected_embedding_weight(self) -> Tensor:
        """The embedding matrix with every maskable row replaced by its training-time expectation
        (special rows unchanged): use it to initialise the embedding of a fine-tuning run."""
        weight = self.embedding.weight
        return torch.where(self.maskable_ids.unsqueeze(1), self._expected(weight), weight)

    def _expected(self, emb: Tensor) -> Tensor:
        c_t, c_mask, c_mean = self.expectation_coefficients()
        weight = self.embedding.weight
        mean = weight.index_select(0, self.random_token_ids).mean(0)
        return c_t * emb + c_mask * weight[self.mask_token_id] + c_mean * mean

    def _check_tokens(self, tokens: Tensor) -> None:
        if not isinstance(tokens, Tensor) or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError("MLMEmbeddingMasker: tokens must be an integer tensor of token ids")

    def forward(self, tokens: Tensor, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """Token ids ``tokens`` [B, L] → ``(embeddings [B, L, dim], targets)``: in training the
        corrupted tokens' embeddings and targets [B, L] (``ignore_index`` where not selected); in
        eval the clean tokens' embeddings (expectation-corrected if configured) and None."""
        if self.training:
            inputs, targets = self.mask(tokens, generator)
            return self.embedding(inputs), targets
        self._check_tokens(tokens)
        emb = self.embedding(tokens)
        if self.consistency == "expectation":
            emb = torch.where(self.maskable_ids[tokens].unsqueeze(-1), self._expected(emb), emb)
        return emb, None

    def extra_repr(self) -> str:
        return (f"mask_token_id={self.mask_token_id}, mask_prob={self.mask_prob}, mask_ratio={self.mask_ratio}, "
                f"random_ratio={self.random_ratio}, consistency={self.consistency!r}")


class MLMHead(nn.Module):
    """BERT's prediction head: dense → GELU → LayerNorm → decoder to the vocabulary. With
    ``embedding`` the decoder reuses (ties) the embedding matrix and keeps its own bias."""

    def __init__(self, dim: int, vocab_size: int, embedding: Optional[nn.Embedding] = None, bias: bool = True):
        super().__init__()
        if embedding is not None and tuple(embedding.weight.shape) != (vocab_size, dim):
            raise ValueError(f"MLMHead: a tied embedding must be [{vocab_size}, {dim}], "
                             f"got {list(embedding.weight.shape)}")
        self.dense = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(dim)
        self.tied = embedding
        if embedding is None:
            self.decoder_weight = nn.Parameter(torch.randn(vocab_size, dim) * dim ** -0.5)
        else:
            self.register_parameter("decoder_weight", None)
        self.decoder_bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None

    @property
    def weight(self) -> Tensor:
        return self.tied.weight if self.tied is not None else self.decoder_weight

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden [..., dim] → logits [..., vocab]."""
        return F.linear(self.norm(self.act(self.dense(hidden))), self.weight, self.decoder_bias)

    def loss(self, hidden: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
        """Mean cross-entropy over the positions whose target is not ``ignore_index`` (0 when
        there are none); only those positions go through the decoder."""
        if hidden.shape[:-1] != targets.shape:
            raise ValueError(f"MLMHead.loss: targets must have shape {list(hidden.shape[:-1])}, "
                             f"got {list(targets.shape)}")
        selected = targets != ignore_index
        logits = self(hidden[selected])
        total = F.cross_entropy(logits, targets[selected], reduction="sum")
        return total / max(logits.shape[0], 1)
