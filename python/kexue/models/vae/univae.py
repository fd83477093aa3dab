"""UniVAE (post UniVAE：基于Transformer的单模型、多尺度的VAE模型): a text VAE whose encoder and decoder
are ONE Transformer, told apart by the attention mask, with latents at several layers.

Construction (as in the post and its reference implementation):

- Input: the sentence twice, ``[CLS] x [SEP] | [CLS] x [SEP]``, segment 0 on the first copy (the
  encoder side) and 1 on the second (the decoder side). The decoder side predicts its next token
  at each position: its [CLS] predicts x_1, ..., x_n predicts the closing [SEP] (END); the
  reconstruction loss is the cross-entropy of those predictions, summed over a sentence.
- UniAE mask (``kexue.ops.rope_attention``, ``mask_rule="uniae"``): the encoder side attends
  bidirectionally within itself and never to the decoder side; a decoder token attends causally
  to the decoder side and, of the encoder side, to position 0 (the encoder's [CLS]) only. In the
  lower ``layers − len(latent_dims)`` blocks the decoder side does not even see that [CLS] (an
  extra mask hides it): there the two copies are two separate streams, an encoder and a plain
  language model.
- Latents at the top blocks ("multi-scale": one latent per block, each reading the encoder at a
  different depth): before each of the top ``len(latent_dims)`` blocks, the [CLS] hidden state h
  is projected down to ``latent_dims[k]`` dimensions, a latent z_k is drawn around it, and
  ``W_up,k z_k`` replaces the [CLS] hidden state. So the decoder sees the source only through
  the z_k, at the block where each enters; the encoder's [CLS] keeps gathering information from
  the source tokens between latent blocks, so z_{k+1} is drawn given x and z_≤k (a hierarchical
  posterior q(z_k | x, z_<k)), while the prior is independent across blocks.
- Latent distribution (``latent``):
  "vmf" (default; the post's choice): the vMF-VAE of 变分自编码器（七）. μ_k = normalise(W_down,k h),
  z_k ~ vMF(μ_k, κ) with a fixed concentration κ (``kappa``), prior uniform on the sphere
  S^{d_k−1}. The KL term KL(vMF(μ, κ) ‖ U(S^{d−1})) = log C_d(κ) + κ A_d(κ) + log|S^{d−1}| is a
  constant of κ and d_k, so it cannot collapse to 0 — an autoregressive decoder as strong as this
  one otherwise learns to ignore its latent (posterior collapse). κ sets how much each latent can
  carry (larger κ: less noise, more information, a larger KL).
  "gaussian": the textbook VAE, (μ_k, log σ_k²) = W_down,k h, z_k = μ_k + σ_k ε, prior N(0, I),
  KL in closed form, for comparison (expect it to collapse towards 0 on strong decoders).
- Loss per sentence (nats): −log p(x | z) + Σ_k KL_k, averaged over the batch (the negative ELBO).

Positions: the decoder side's positions restart at 0, so a decoder token's rotary offset from the
[CLS] it reads does not reveal the length of the encoded sentence: the decoder's outputs depend on
the input only through the latents (checked by the tests with the latents held fixed).

Sampling: z_k from the prior at every latent block (independently), decoded with an empty
encoder side (a lone [CLS], replaced by the latents anyway), greedily or by sampling, re-running
the whole row at each step. ``encode`` returns the posterior modes (μ_k, each computed given the
earlier modes), ``reconstruct`` decodes them greedily. Ids are content ids in [0, V)
(``kexue.models.text.packing``).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from kexue import _random
from kexue.distributions import DiagonalNormal, VonMisesFisher, kl_vmf_uniform
from kexue.models.text.decoding import DecodeState
from kexue.models.text.packing import (
    CLS,
    IGNORE,
    N_SPECIAL,
    PAD,
    Generated,
    Packed,
    check_content_ids,
    check_positive_int,
    decode_rows,
    full_lengths,
    next_token_labels,
    pack,
    prediction_window,
    wrap,
)
from kexue.models.vae.poetry import POEMS_ENV
from kexue.nn.rope import RoPE
from kexue.nn.transformer import TransformerStack
from kexue.train.options import options_of
from kexue.train.registry import register

Tensor = torch.Tensor
LATENTS = ("vmf", "gaussian")
# A batch: ids [B, L], or (ids, lengths) for right-padded rows of different lengths.
Batch = Union[Tensor, Sequence[Tensor]]


class UniVAE(nn.Module):
    """UniVAE over content ids in [0, ``vocab_size``) (see the module docstring).

    ``layers`` Transformer blocks of width ``dim`` with ``heads`` heads, rotary positions (base
    ``rope_base``), residual arrangement ``norm``; latents of sizes ``latent_dims`` before the top
    ``len(latent_dims)`` blocks (bottom to top), distributed as ``latent`` ("vmf" with
    concentration ``kappa``, or "gaussian"). ``max_length``: the default length of ``sample``.

    Options:
    dim: model width (hidden size); dim / heads must be even
    heads: attention heads per block
    layers: Transformer blocks (more than len(latent_dims))
    latent_dims: sizes of the latents, one per top block, bottom to top (JSON list; >= 2 each
      for 'vmf')
    latent: 'vmf' (fixed-kappa vMF posterior, uniform prior on the sphere, constant KL) or
      'gaussian' (diagonal normal posterior, N(0, I) prior) latent distribution
    kappa: concentration of the vMF posteriors, > 0 (larger: more information per latent, a
      larger constant KL); used with latent='vmf'
    ffn_mult: feed-forward hidden width as a multiple of dim
    norm: residual arrangement of the blocks: 'pre', 'post' or 'deepnorm'
    dropout: dropout probability on the attention and feed-forward outputs, in [0, 1)
    rope_base: base of the rotary position frequencies
    max_length: default maximum length (content ids) of sampled sentences (None: sample needs
      max_len)
    """

    def __init__(self, vocab_size: int, *, dim: int = 128, heads: int = 4, layers: int = 4,
                 latent_dims: Sequence[int] = (16, 16), latent: str = "vmf", kappa: float = 32.0,
                 ffn_mult: int = 4, norm: str = "pre", dropout: float = 0.0, rope_base: float = 10000.0,
                 max_length: Optional[int] = None):
        super().__init__()
        who = "UniVAE"
        for name, v in (("vocab_size", vocab_size), ("dim", dim), ("heads", heads), ("layers", layers)):
            check_positive_int(who, name, v)
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"{who}: dim / heads must be an even integer (the rotary head size), got dim={dim}, "
                             f"heads={heads}")
        if latent not in LATENTS:
            raise ValueError(f"{who}: latent must be one of {LATENTS}, got {latent!r}")
        if isinstance(latent_dims, (str, bytes)) or not isinstance(latent_dims, Sequence) or not latent_dims:
            raise ValueError(f"{who}: latent_dims must be a non-empty list of latent sizes, got {latent_dims!r}")
        for d in latent_dims:
            check_positive_int(who, "every entry of latent_dims", d, minimum=2 if latent == "vmf" else 1)
        if len(latent_dims) >= layers:
            raise ValueError(f"{who}: {len(latent_dims)} latent blocks need at least {len(latent_dims) + 1} layers "
                             f"(a latent read before block 0 would see the [CLS] embedding alone), got layers={layers}")
        if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not math.isfinite(kappa) or kappa <= 0:
            raise ValueError(f"{who}: kappa (the vMF concentration) must be a finite number > 0, got {kappa!r}")
        if max_length is not None:
            check_positive_int(who, "max_length", max_length)
        self.vocab_size, self.latent, self.max_length = vocab_size, latent, max_length
        self.latent_dims = tuple(int(d) for d in latent_dims)
        self.first_latent_block = layers - len(self.latent_dims)
        self.end = vocab_size
        self.token_embedding = nn.Embedding(vocab_size + N_SPECIAL, dim)
        self.segment_embedding = nn.Embedding(2, dim)
        self.transformer = TransformerStack(dim, heads, layers, ffn_mult=ffn_mult, norm=norm,
                                            rope=RoPE(dim // heads, base=rope_base), dropout=dropout)
        width = 1 if latent == "vmf" else 2  # μ, or (μ, log σ²)
        self.to_latent = nn.ModuleList(nn.Linear(dim, width * d) for d in self.latent_dims)
        self.from_latent = nn.ModuleList(nn.Linear(d, dim) for d in self.latent_dims)
        self.head = nn.Linear(dim, vocab_size + 1)
        # A buffer, so a checkpoint carries the κ it was trained with.
        self.register_buffer("kappa", torch.tensor(float(kappa)))

    # ---- layout ---------------------------------------------------------------------------------

    def split(self, batch: Batch) -> Tuple[Tensor, Tensor]:
        """``(ids, lengths)`` of a batch: ids [B, L] (every row full), or (ids, lengths)."""
        if isinstance(batch, Tensor):
            ids, lengths = batch, None
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            ids, lengths = batch
        else:
            raise TypeError(f"UniVAE: a batch is ids [B, L] or a tuple (ids, lengths), got {type(batch).__name__}")
        check_content_ids(ids, self.vocab_size, "UniVAE: ids")
        return ids, full_lengths(ids, lengths, "UniVAE: lengths")

    def pack(self, ids: Tensor, lengths: Tensor) -> Packed:
        """Rows ``[CLS] x [SEP] [CLS] x [SEP] PAD...``, the second copy's positions from 0."""
        copy = wrap(ids, lengths, start=CLS)
        return pack(copy, lengths + 2, copy, lengths + 2, restart_positions=True)

    # ---- network --------------------------------------------------------------------------------

    def posterior(self, k: int, h_cls: Tensor):
        """q(z_k | ·) from the [CLS] hidden state [B, dim] before latent block k."""
        out = self.to_latent[k](h_cls).float()
        if self.latent == "vmf":
            return VonMisesFisher(F.normalize(out, dim=-1), self.kappa.to(out.dtype), validate_args=False)
        mean, log_var = out.chunk(2, dim=-1)
        return DiagonalNormal(mean, log_var, validate_args=False)

    def kl(self, k: int, q) -> Tensor:
        """KL(q(z_k | ·) ‖ prior) per row, [B] (a constant of κ and d_k for "vmf")."""
        if self.latent == "vmf":
            return kl_vmf_uniform(self.latent_dims[k], self.kappa).to(q.loc.dtype).expand(q.batch_shape)
        return q.kl_to_standard_normal()

    def run(self, packed: Packed, latents: Optional[Sequence[Tensor]] = None, *, sample: bool = True,
             generator: Optional[torch.Generator] = None) -> Tuple[Tensor, List, List[Tensor]]:
        """Packed rows (``pack``) through the blocks under the UniAE mask: returns (final hidden
        states [B, T, dim], the posteriors q(z_k | ·), the latents used [B, d_k]).

        With ``latents`` (a list of [B, d_k]) they replace the [CLS] at the latent blocks and no
        posterior is computed — the decoder side then depends on nothing else of the encoder
        side; otherwise each z_k is drawn from its posterior (``sample``, with ``generator``) or
        set to its mode."""
        x = self.token_embedding(packed.tokens) + self.segment_embedding(packed.segment_ids)
        length = packed.tokens.shape[1]
        # The lower blocks' extra mask: decoder queries do not see key 0 (the encoder's [CLS]).
        is_decoder = packed.segment_ids == 1
        key0 = torch.arange(length, device=x.device) == 0
        hide_cls = ~(is_decoder[:, None, :, None] & key0[None, None, None, :])
        posteriors, used = [], []
        for i, block in enumerate(self.transformer.blocks):
            k = i - self.first_latent_block
            if k >= 0:
                if latents is None:
                    q = self.posterior(k, x[:, 0])
                    z = q.rsample(generator=generator) if sample else q.loc
                    posteriors.append(q)
                else:
                    z = latents[k]
                used.append(z)
                x = torch.cat([self.from_latent[k](z.to(x.dtype))[:, None], x[:, 1:]], dim=1)
            x = block(x, positions=packed.positions, segment_ids=packed.segment_ids, mask_rule="uniae",
                      key_lengths=packed.lengths, attn_mask=None if k >= 0 else hide_cls)
        return self.transformer.final_norm(x), posteriors, used

    def _check_latents(self, latents: Sequence[Tensor], who: str) -> List[Tensor]:
        if not isinstance(latents, (list, tuple)) or len(latents) != len(self.latent_dims):
            raise ValueError(f"{who}: latents must be a list of {len(self.latent_dims)} tensors (one per latent "
                             f"block), got {type(latents).__name__}"
                             + (f" of length {len(latents)}" if isinstance(latents, (list, tuple)) else ""))
        n = None
        for k, (z, d) in enumerate(zip(latents, self.latent_dims)):
            if not isinstance(z, Tensor) or not z.dtype.is_floating_point or z.dim() != 2 or z.shape[1] != d:
                got = f"{z.dtype} {list(z.shape)}" if isinstance(z, Tensor) else type(z).__name__
                raise ValueError(f"{who}: latents[{k}] must be a float tensor [n, {d}], got {got}")
            if n is not None and z.shape[0] != n:
                raise ValueError(f"{who}: every latent must have the same n, got {n} and {z.shape[0]}")
            n = z.shape[0]
        return list(latents)

    # ---- training -------------------------------------------------------------------------------

    def negative_elbo(self, batch: Batch, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """Per-sentence terms in nats, [B]: "recon" = −log p(x | z) at z ~ q(z | x), "kl" = Σ_k KL_k,
        "bound" their sum; and "correct"/"counted", the teacher-forced hits and predictions."""
        ids, lengths = self.split(batch)
        packed = self.pack(ids, lengths)
        h, posteriors, _ = self.run(packed, sample=True, generator=generator)
        # The decoder side's [CLS], x_1 ... x_L predict; the output layer runs on them alone.
        idx, labels = prediction_window(packed, next_token_labels(packed, self.vocab_size, from_first=False), 0,
                                        ids.shape[1] + 1)
        logits = self.head(h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1])))
        recon = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE,
                                reduction="none").view(labels.shape).sum(1)
        kl = sum(self.kl(k, q) for k, q in enumerate(posteriors))
        counted = labels != IGNORE
        correct = ((logits.argmax(-1) == labels) & counted).sum(1)
        return {"recon": recon, "kl": kl, "bound": recon + kl, "correct": correct, "counted": counted.sum(1)}

    def _metrics(self, t: Dict[str, Tensor]) -> Dict[str, Tensor]:
        bound = t["bound"].mean()
        tokens = t["counted"].sum().clamp_min(1)
        return {"loss": bound, "recon": t["recon"].mean().detach(), "kl": t["kl"].mean().detach(),
                "bits_per_token": (t["bound"].sum() / tokens).detach() / math.log(2),
                "token_accuracy": (t["correct"].sum() / tokens).detach()}

    def loss(self, batch: Batch) -> Dict[str, Tensor]:
        """Mean negative ELBO per sentence (nats) as "loss", with its parts, the bound in bits
        per predicted token (END included) and the teacher-forced token accuracy."""
        return self._metrics(self.negative_elbo(batch))

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> Dict[str, float]:
        return {k: float(v) for k, v in self._metrics(self.negative_elbo(batch)).items()}

    # ---- latents and decoding -------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, batch: Batch) -> List[Tensor]:
        """The posterior modes [B, d_k] at each latent block, bottom to top (each computed given
        the earlier modes): unit vectors for "vmf", means for "gaussian"."""
        ids, lengths = self.split(batch)
        # The latents read the encoder side only, which never sees the decoder side: encode
        # [CLS] x [SEP] alone.
        copy = wrap(ids, lengths, start=CLS)
        empty = torch.zeros(ids.shape[0], 0, dtype=torch.long, device=ids.device)
        _, _, latents = self.run(pack(copy, lengths + 2, empty, torch.zeros_like(lengths)), sample=False)
        return latents

    def sample_prior(self, n: int, generator: Optional[torch.Generator] = None) -> List[Tensor]:
        """One draw per latent block from the prior, [n, d_k] each: uniform on the sphere for
        "vmf", N(0, I) for "gaussian"."""
        check_positive_int("UniVAE.sample_prior", "n", n, minimum=0)
        w = self.head.weight
        out = []
        for d in self.latent_dims:
            z = _random.randn(n, d, generator=generator, device=w.device, dtype=w.dtype)
            out.append(F.normalize(z, dim=-1) if self.latent == "vmf" else z)
        return out

    @torch.no_grad()
    def decode(self, latents: Sequence[Tensor], max_len: int, *, greedy: bool = True, temperature: float = 1.0,
               generator: Optional[torch.Generator] = None) -> Generated:
        """Sentences from latents (a list of [n, d_k], bottom to top; e.g. mix blocks of two
        sentences' codes to see what each scale carries): at most ``max_len`` content ids each,
        stopping at END; each step takes the most likely class (``greedy``) or draws one from
        softmax(logits / ``temperature``) with ``generator``."""
        latents = self._check_latents(latents, "UniVAE.decode")
        check_positive_int("UniVAE.decode", "max_len", max_len)
        if not greedy and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                           or not math.isfinite(temperature) or temperature <= 0):
            raise ValueError(f"UniVAE.decode: temperature must be a finite number > 0, got {temperature!r}")
        n, device = latents[0].shape[0], latents[0].device
        # The encoder side is a lone [CLS] (its state is replaced by the latents); the decoder
        # side starts with its own [CLS] at position 0.
        tokens = torch.full((n, 2 + max_len), PAD, dtype=torch.long, device=device)
        tokens[:, :2] = CLS
        j = torch.arange(2 + max_len, device=device)
        segment_ids = (j >= 1).long().expand(n, -1)
        positions = (j - 1).clamp_min(0).expand(n, -1)
        state = DecodeState(tokens, torch.full((n,), 2, dtype=torch.long, device=device), max_len, self.vocab_size)
        for t in range(max_len):
            width = 2 + t
            rows = Packed(state.tokens[:, :width], segment_ids[:, :width], positions[:, :width],
                          torch.full((n,), width, dtype=torch.long, device=device), torch.ones_like(state.count))
            h, _, _ = self.run(rows, latents)
            log_p = torch.log_softmax(self.head(h[:, -1]).float(), dim=-1)
            if greedy:
                chosen, cls = log_p.max(dim=-1)
            else:
                cls = torch.multinomial(torch.softmax(log_p / temperature, dim=-1), 1, generator=generator)[:, 0]
                chosen = log_p.gather(1, cls[:, None])[:, 0]
            state.append(t, cls, chosen)
            if state.done():
                break
        return state.result()

    @torch.no_grad()
    def reconstruct(self, batch: Batch, max_len: Optional[int] = None) -> Generated:
        """Greedy decoding of ``encode(batch)``; ``max_len`` defaults to the batch's width."""
        ids, _ = self.split(batch)
        return self.decode(self.encode(batch), ids.shape[1] if max_len is None else max_len)

    @torch.no_grad()
    def sample(self, n: int, max_len: Optional[int] = None, generator: Optional[torch.Generator] = None, *,
               greedy: bool = True, temperature: float = 1.0) -> Tensor:
        """Ids [n, max_len] (NO_TOKEN past each sentence's end) decoded from latents drawn from
        the prior; ``max_len`` defaults to ``max_length``."""
        if max_len is None:
            if self.max_length is None:
                raise ValueError("UniVAE.sample: pass max_len (this model was built without max_length)")
            max_len = self.max_length
        latents = self.sample_prior(n, generator)
        if n == 0:
            return torch.empty(0, max_len, dtype=torch.long, device=self.head.weight.device)
        return self.decode(latents, max_len, greedy=greedy, temperature=temperature, generator=generator).ids


def build_univae(dataset, **overrides) -> UniVAE:
    """The ``kexue train univae`` builder: a text data set (a .txt file of equal-length lines)
    gives the vocabulary and the default sample length."""
    if getattr(dataset, "vocab", None) is None or len(dataset.event_shape) != 1:
        raise ValueError(f"univae needs a text data set (a .txt file of equal-length lines), got {dataset.name!r} "
                         f"with event shape {list(dataset.event_shape)}")
    if overrides.get("max_length") is None:  # None is the option's "derived" default
        overrides["max_length"] = dataset.event_shape[0]
    return UniVAE(len(dataset.vocab), **overrides)


def sample_lines(model: UniVAE, dataset, n: int, generator: Optional[torch.Generator]) -> List[str]:
    """``n`` lines decoded greedily from latents drawn from the prior (samples.txt of a run,
    ``kexue sample``)."""
    return decode_rows(dataset.vocab, model.sample(n, generator=generator))


register("univae", build_univae, default_data=f"${POEMS_ENV}", steps=2000, batch_size=64, lr=1e-3, text=sample_lines,
         options=options_of(UniVAE, data=("vocab_size",), derived={"max_length": "the line length"}),
         description="UniVAE: one RoPE Transformer with the UniAE mask, vMF latents at the top blocks' [CLS]")

__all__ = ["LATENTS", "UniVAE", "build_univae"]
