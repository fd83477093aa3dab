"""The CNN-VAE poetry generator of the post 基于CNN和VAE的作诗机器人: fixed-length poems (e.g.
five-character quatrains, 24 characters with punctuation) from a Gaussian latent.

Encoder: character embedding → gated 1-D convolution residual blocks (GLU-style,
``x + a ⊙ sigmoid(b)`` with ``[a; b] = conv(x)``) → mean over positions → (μ, log σ²).
Decoder: ``z`` → a linear map to a [hidden, L] feature map (each position gets its own slice of
z's projection, so positions are told apart without position embeddings) → gated conv blocks
→ a per-position softmax over the vocabulary. The decoder is non-autoregressive: given z the
characters are independent, every position is predicted from z alone, so a poem's structure
(rhyme, parallelism, repeated characters) must be carried by z.

Loss per poem (nats): −log p(x|z) (sum of the positions' cross-entropies) + KL(q(z|x) ‖ N(0, I)).

``bn=True`` is BN-VAE on the latent (post 变分自编码器（五）): μ and σ are batch-normalised and
scaled by ``kexue.nn.bn_latent.BatchNormLatent``, which keeps the data-averaged KL above
½ Σ γ_μ² ≥ ½·latent_dim·τ, so the latent cannot collapse.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from kexue import _random
from kexue.data.text import Vocabulary
from kexue.distributions import DiagonalNormal
from kexue.nn.bn_latent import BatchNormLatent
from kexue.train.options import options_of
from kexue.train.registry import register
from kexue.ops._common import can_check_values

Tensor = torch.Tensor
# log σ² floor for the BN parametrisation, where σ = γ_σ·BN(σ_raw) may come out (almost) zero.
_MIN_VAR = 1e-10


class GatedConvBlock(nn.Module):
    """Residual gated 1-D convolution (GLU; Dauphin et al. 2017, the post's GCNN):
    ``x + a ⊙ sigmoid(b)`` with ``[a; b] = conv(x)``, 'same' padding, on [B, C, L]."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: int = 1):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"GatedConvBlock: kernel_size must be a positive odd integer, got {kernel_size}")
        self.conv = nn.Conv1d(channels, 2 * channels, kernel_size, padding=dilation * (kernel_size - 1) // 2,
                              dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.conv(x).chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


def _as_vocabulary(vocab: Union[Vocabulary, str, Sequence[str]]) -> Vocabulary:
    return vocab if isinstance(vocab, Vocabulary) else Vocabulary(vocab)


class PoetryVAE(nn.Module):
    """CNN-VAE over character ids [B, L] (``length`` = L) with vocabulary ``vocab`` (a
    ``kexue.data.Vocabulary`` or its characters). The vocabulary travels in the state dict (as
    code points), so a loaded model decodes its own ids.

    Options:
    hidden: width of the character embedding and of the gated conv feature maps
    latent_dim: number of latent dimensions of z
    blocks: gated conv residual blocks in the encoder and in the decoder (dilations 1, 2, 4, ...)
    kernel_size: width of the gated 1-D convolutions (a positive odd integer)
    bn: batch-normalise the posterior's mean and std (BN-VAE latent, keeps the KL from collapsing)
    tau: with bn=true, share of the prior's unit variance guaranteed to the posterior means, in [0, 1)
    """

    def __init__(self, vocab: Union[Vocabulary, str, Sequence[str]], length: int, *, hidden: int = 128,
                 latent_dim: int = 64, blocks: int = 2, kernel_size: int = 3, bn: bool = False,
                 tau: float = 0.5):
        super().__init__()
        vocab = _as_vocabulary(vocab)
        for name, v in (("length", length), ("hidden", hidden), ("latent_dim", latent_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"PoetryVAE: {name} must be a positive integer, got {v!r}")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
            raise ValueError(f"PoetryVAE: blocks must be a non-negative integer, got {blocks!r}")
        self.length, self.hidden, self.latent_dim, self.bn = length, hidden, latent_dim, bool(bn)
        self.vocab_size = len(vocab)
        self.register_buffer("codepoints", torch.tensor([ord(c) for c in vocab.chars], dtype=torch.long))
        self.embedding = nn.Embedding(self.vocab_size, hidden)
        # Dilations 1, 2, 4, ... so that a few blocks see a whole line of a poem.
        self.encoder = nn.Sequential(*(GatedConvBlock(hidden, kernel_size, 2**i) for i in range(blocks)))
        self.to_latent = nn.Linear(hidden, 2 * latent_dim)
        self.bn_latent = BatchNormLatent(latent_dim, tau) if self.bn else None
        self.from_latent = nn.Linear(latent_dim, hidden * length)
        self.decoder = nn.Sequential(*(GatedConvBlock(hidden, kernel_size, 2**i) for i in range(blocks)))
        # A Linear on [B, L, hidden] rather than a 1x1 conv, so that the logits come out [B, L, V]
        # with the softmax dimension contiguous (several times faster on the CPU for V ~ 5000).
        self.to_logits = nn.Linear(hidden, self.vocab_size)

    # ---- vocabulary ----------------------------------------------------------------------------

    @property
    def vocab(self) -> Vocabulary:
        return Vocabulary(chr(c) for c in self.codepoints.tolist())

    def decode_text(self, ids: Tensor) -> Union[str, List[str]]:
        """The poem of ids [L], or the list of poems of ids [N, L]."""
        return self.vocab.decode(ids)

    def encode_text(self, poems: Union[str, Sequence[str]]) -> Tensor:
        """Ids of one poem ([L]) or of a list of poems ([N, L]) on the model's device."""
        ids = self.vocab.encode(poems)
        if ids.shape[-1] != self.length:
            raise ValueError(f"PoetryVAE: poems must have {self.length} characters, got {ids.shape[-1]}")
        return ids.to(self.codepoints.device)

    # ---- model ---------------------------------------------------------------------------------

    def _check_ids(self, ids: Tensor) -> None:
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
            got = ids.dtype if isinstance(ids, Tensor) else type(ids).__name__
            raise TypeError(f"PoetryVAE: expected an integer tensor of character ids, got {got}")
        if ids.dim() != 2 or ids.shape[1] != self.length:
            raise ValueError(f"PoetryVAE: expected ids of shape [B, {self.length}], got {list(ids.shape)}")
        # On the CPU a bad id is a clear error here; on CUDA the embedding's device-side check
        # catches it without a host synchronisation every step.
        if can_check_values(ids) and bool(((ids < 0) | (ids >= self.vocab_size)).any()):
            raise ValueError(f"PoetryVAE: character ids must lie in [0, {self.vocab_size}), got values in "
                             f"[{int(ids.min())}, {int(ids.max())}]")

    def posterior(self, ids: Tensor) -> DiagonalNormal:
        """q(z|x), batch [B], event [latent_dim]."""
        self._check_ids(ids)
        h = self.encoder(self.embedding(ids.long()).transpose(1, 2))
        mean, second = self.to_latent(h.mean(dim=2)).chunk(2, dim=1)
        if self.bn_latent is None:
            return DiagonalNormal(mean, second, validate_args=False)
        if self.training and ids.shape[0] < 2:
            raise ValueError("PoetryVAE: with bn=True, training-mode batches need at least 2 poems (BatchNorm "
                             "uses the batch's statistics); call model.eval() for single poems")
        mean, std = self.bn_latent(mean, second)
        return DiagonalNormal(mean, torch.log(std.square().clamp_min(_MIN_VAR)), validate_args=False)

    def logits(self, z: Tensor) -> Tensor:
        """Per-position logits over the vocabulary, [B, L, V], from latents [B, latent_dim]."""
        h = self.from_latent(z).view(z.shape[0], self.hidden, self.length)
        return self.to_logits(self.decoder(h).transpose(1, 2))

    def log_likelihood_given(self, ids: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) per poem, [B]: the sum of the positions' log-softmax at the true ids."""
        logits = self.logits(z)
        return -F.cross_entropy(logits.reshape(-1, self.vocab_size), ids.long().reshape(-1),
                                reduction="none").view(ids.shape).sum(1)

    def negative_elbo(self, ids: Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """Per-poem terms in nats: "recon" = −log p(x|z) at one z ~ q(z|x), "kl", and their sum
        "bound" (≥ −log p(x))."""
        q = self.posterior(ids)
        recon = -self.log_likelihood_given(ids, q.rsample(generator=generator))
        kl = q.kl_to_standard_normal()
        return {"recon": recon, "kl": kl, "bound": recon + kl}

    @torch.no_grad()
    def importance_terms(self, ids: Tensor, k: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """``log p(x|z) + log p(z) − log q(z|x)`` at k samples z ~ q(z|x) per poem, [k, B]
        (the protocol of ``kexue.models.vae.likelihood``)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"PoetryVAE.importance_terms: k must be a positive integer, got {k!r}")
        q = self.posterior(ids)
        z = q.sample((k,), generator=generator)  # [k, B, latent]
        prior = DiagonalNormal(torch.zeros_like(z), torch.zeros_like(z), validate_args=False)
        log_px = self.log_likelihood_given(ids.repeat(k, 1), z.flatten(0, 1)).view(k, -1)
        return log_px + prior.log_prob(z) - q.log_prob(z)

    def _metrics(self, t: Dict[str, Tensor]) -> Dict[str, Tensor]:
        bound = t["bound"].mean()
        out = {"loss": bound, "recon": t["recon"].mean().detach(), "kl": t["kl"].mean().detach(),
               "bits_per_char": bound.detach() / (self.length * math.log(2))}
        if self.bn_latent is not None:
            out["kl_bound"] = self.bn_latent.kl_lower_bound().detach()
        return out

    def loss(self, ids: Tensor) -> Dict[str, Tensor]:
        """Mean negative ELBO per poem (nats) as "loss", with its parts and the bound in bits per
        character (and BN's KL floor with ``bn=True``)."""
        return self._metrics(self.negative_elbo(ids))

    @torch.no_grad()
    def evaluate(self, ids: Tensor) -> Dict[str, float]:
        return {k: float(v) for k, v in self._metrics(self.negative_elbo(ids)).items()}

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None,
               greedy: bool = True) -> Tensor:
        """Ids [n, L] of poems decoded from z ~ N(0, temperature²·I): each position's most
        likely character (``greedy``, as in the post) or a draw from its softmax."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"PoetryVAE.sample: n must be a non-negative integer, got {n!r}")
        if not temperature >= 0:
            raise ValueError(f"PoetryVAE.sample: temperature must be non-negative, got {temperature!r}")
        w = self.from_latent.weight
        z = temperature * _random.randn(n, self.latent_dim, generator=generator, device=w.device, dtype=w.dtype)
        logits = self.logits(z)
        if greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.reshape(-1, self.vocab_size).float(), dim=-1)
        return torch.multinomial(probs, 1, generator=generator).view(n, self.length)

    def generate(self, n: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None,
                 greedy: bool = True) -> List[str]:
        """``n`` random poems as strings (``sample`` then ``decode_text``)."""
        return self.decode_text(self.sample(n, temperature, generator, greedy))


def build_poetry_vae(dataset, **overrides) -> PoetryVAE:
    """The ``kexue train poetry-vae`` builder: a text data set (a .txt file of poems) gives the
    vocabulary and the poem length."""
    if getattr(dataset, "vocab", None) is None or len(dataset.event_shape) != 1:
        raise ValueError(f"poetry-vae needs a text data set (a .txt file of equal-length lines), "
                         f"got {dataset.name!r} with event shape {list(dataset.event_shape)}")
    return PoetryVAE(dataset.vocab, dataset.event_shape[0], **overrides)


# The package ships no poem corpus: the default data is whatever file KEXUE_POEMS points to
# (kexue.data.get_dataset expands the variable and explains when it is unset).
POEMS_ENV = "KEXUE_POEMS"

def sample_poems(model: PoetryVAE, dataset, n: int, generator: Optional[torch.Generator]) -> List[str]:
    """``n`` poems decoded from the prior (samples.txt of a run, ``kexue sample``)."""
    return model.generate(n, generator=generator)


# BN on the posterior means by default: the plain VAE's KL collapses on poems (0.5 nats after
# 1000 steps) and every sample is the same few characters; with BN the latent carries 70 nats.
register("poetry-vae", build_poetry_vae, default_data=f"${POEMS_ENV}", steps=1000, batch_size=32, lr=3e-3,
         text=sample_poems, presets=dict(bn=True),
         options=options_of(PoetryVAE, data=("vocab", "length")),
         description="CNN-VAE poetry generator: gated 1-D convs, per-position softmax, BN-VAE posterior "
                     "(--set bn=false: the plain VAE)")

__all__ = ["GatedConvBlock", "POEMS_ENV", "PoetryVAE", "build_poetry_vae"]
