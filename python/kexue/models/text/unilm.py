"""UniLM seq2seq (post 从语言模型到Seq2Seq：Transformer如戏，全靠Mask; Dong et al. 2019, "Unified
Language Model Pre-training for Natural Language Understanding and Generation").

One Transformer reads ``[CLS] source [SEP] target [SEP]`` with segment ids 0 on ``[CLS] source
[SEP]`` and 1 on ``target [SEP]``; the attention mask alone turns it into an encoder-decoder
(``kexue.ops.rope_attention`` with ``mask_rule="unilm"``): with c = cumsum(segment_ids), key k is
visible from query q iff c[k] ≤ c[q], so the source attends bidirectionally within itself and
every target token attends to the whole source and to the targets up to itself. Positions are
rotary (RoPE) along the packed row; a learned segment embedding is added to the token embedding,
as in BERT/UniLM.

Training (teacher forcing): the position of each token predicts the next one where that next
token belongs to the target — the source's ``[SEP]`` predicts the first target token, the last
target token predicts the closing ``[SEP]`` (END) — and the loss is the mean cross-entropy over
those predictions only:

    L = −(1/Σ_b (m_b + 1)) Σ_b Σ_{j=1}^{m_b+1} log p(y_j | x, y_<j),   y_{m+1} = END.

Decoding re-runs the whole packed row at each step (no key/value cache: correctness over speed)
and stops a row at END: greedy (argmax per step) or beam search over ``beam`` hypotheses per
source, batched as B·beam rows. A beam keeps the ``beam`` best (partial or finished) hypotheses by
``log p / n^α`` (n = tokens predicted so far, END included; α = ``length_penalty``, 0 = plain
log-probability), and the best of the final beam is returned. Beam search is approximate: it
usually finds a more probable output than greedy decoding, but is not guaranteed to.

Ids are content ids in [0, V) (``kexue.models.text.packing``: the model adds its own [CLS], [SEP]
and padding). For ``kexue train unilm`` on a text file of equal-length lines each line is split
in two: source = its first ``source_length`` characters (default: the first half), target = the
rest — for five-character quatrains (24 characters with punctuation), the first two lines lead
to the last two.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from kexue.models.text.decoding import DecodeState
from kexue.models.text.packing import (
    CLS,
    IGNORE,
    N_SPECIAL,
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
from kexue.nn.rope import RoPE
from kexue.nn.transformer import TransformerStack
from kexue.train.options import options_of
from kexue.train.registry import register

Tensor = torch.Tensor
# A batch: ids [B, L] (split into source and target at ``source_length``), or
# (source, target) or (source, target, source_lengths, target_lengths).
Batch = Union[Tensor, Sequence[Tensor]]


class UniLM(nn.Module):
    """UniLM seq2seq over content ids in [0, ``vocab_size``) (see the module docstring).

    Architecture: token + segment embeddings → ``layers`` Transformer blocks of width ``dim``
    with ``heads`` heads, rotary positions (base ``rope_base``), residual arrangement ``norm``
    ("pre", "post" or "deepnorm") → a linear layer to ``vocab_size + 1`` classes (the content
    ids and END). ``source_length``: where a plain [B, L] batch is split into source and target
    (default L // 2).

    Options:
    dim: model width (hidden size); dim / heads must be even
    heads: attention heads per block
    layers: Transformer blocks
    ffn_mult: feed-forward hidden width as a multiple of dim
    norm: residual arrangement of the blocks: 'pre', 'post' or 'deepnorm'
    dropout: dropout probability on the attention and feed-forward outputs, in [0, 1)
    rope_base: base of the rotary position frequencies
    source_length: ids of each line taken as the source, the rest being the target (must be
      below the line length; None: half the line)
    """

    def __init__(self, vocab_size: int, *, dim: int = 128, heads: int = 4, layers: int = 4, ffn_mult: int = 4,
                 norm: str = "pre", dropout: float = 0.0, rope_base: float = 10000.0,
                 source_length: Optional[int] = None):
        super().__init__()
        who = "UniLM"
        for name, v in (("vocab_size", vocab_size), ("dim", dim), ("heads", heads), ("layers", layers)):
            check_positive_int(who, name, v)
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"{who}: dim / heads must be an even integer (the rotary head size), got dim={dim}, "
                             f"heads={heads}")
        if source_length is not None:
            check_positive_int(who, "source_length", source_length, minimum=0)
        self.vocab_size, self.source_length = vocab_size, source_length
        self.end = vocab_size  # the END class: the closing [SEP]
        self.token_embedding = nn.Embedding(vocab_size + N_SPECIAL, dim)
        self.segment_embedding = nn.Embedding(2, dim)
        self.transformer = TransformerStack(dim, heads, layers, ffn_mult=ffn_mult, norm=norm,
                                            rope=RoPE(dim // heads, base=rope_base), dropout=dropout)
        self.head = nn.Linear(dim, vocab_size + 1)

    # ---- layout ---------------------------------------------------------------------------------

    def split(self, batch: Batch) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(source, target, source_lengths, target_lengths)`` of a batch: ids [B, L] cut at
        ``source_length`` (default L // 2), or a (source, target[, source_lengths,
        target_lengths]) tuple of right-padded content ids."""
        if isinstance(batch, Tensor):
            check_content_ids(batch, self.vocab_size, "UniLM: the batch")
            width = batch.shape[1]
            cut = width // 2 if self.source_length is None else self.source_length
            if not 0 <= cut < width:
                raise ValueError(f"UniLM: source_length={cut} leaves no target in rows of {width} ids; it must be "
                                 f"below the row length")
            source, target = batch[:, :cut], batch[:, cut:]
            return source, target, full_lengths(source, None, ""), full_lengths(target, None, "")
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 4):
            raise TypeError("UniLM: a batch is ids [B, L] or a tuple (source, target) or (source, target, "
                            f"source_lengths, target_lengths), got {type(batch).__name__}"
                            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
        source, target = batch[0], batch[1]
        src_len, tgt_len = (batch[2], batch[3]) if len(batch) == 4 else (None, None)
        check_content_ids(source, self.vocab_size, "UniLM: source")
        check_content_ids(target, self.vocab_size, "UniLM: target")
        if source.shape[0] != target.shape[0]:
            raise ValueError(f"UniLM: source and target must have the same batch size, got {source.shape[0]} and "
                             f"{target.shape[0]}")
        return (source, target, full_lengths(source, src_len, "UniLM: source_lengths"),
                full_lengths(target, tgt_len, "UniLM: target_lengths"))

    def pack(self, source: Tensor, target: Tensor, source_lengths: Tensor, target_lengths: Tensor) -> Packed:
        """The packed rows ``[CLS] source [SEP] target [SEP] PAD...`` (``packing.pack``)."""
        return pack(wrap(source, source_lengths, start=CLS), source_lengths + 2,
                    wrap(target, target_lengths, start=None), target_lengths + 1)

    # ---- network --------------------------------------------------------------------------------

    def hidden(self, packed: Packed) -> Tensor:
        """Final hidden states [B, T, dim] of packed rows under the UniLM mask."""
        x = self.token_embedding(packed.tokens) + self.segment_embedding(packed.segment_ids)
        return self.transformer(x, positions=packed.positions, segment_ids=packed.segment_ids, mask_rule="unilm",
                                key_lengths=packed.lengths)

    def logits(self, packed: Packed) -> Tensor:
        """Next-token logits [B, T, vocab_size + 1] at every position of packed rows."""
        return self.head(self.hidden(packed))

    def _token_nll(self, batch: Batch) -> Tuple[Tensor, Tensor, Tensor]:
        """(−log p of each prediction [B, W] (0 where unlabelled), labels [B, W], logits), over the
        window of W = target width + 1 positions from each source's [SEP] on."""
        source, target, source_lengths, target_lengths = self.split(batch)
        packed = self.pack(source, target, source_lengths, target_lengths)
        h = self.hidden(packed)
        idx, labels = prediction_window(packed, next_token_labels(packed, self.vocab_size, from_first=True), -1,
                                        target.shape[1] + 1)
        logits = self.head(h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1])))
        nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE,
                              reduction="none").view(labels.shape)
        return nll, labels, logits

    def log_prob(self, source: Tensor, target: Tensor, source_lengths: Optional[Tensor] = None,
                 target_lengths: Optional[Tensor] = None) -> Tensor:
        """log p(target, END | source) per row, [B]: the sum of the target tokens' and the END's
        log-probabilities under teacher forcing."""
        nll, _, _ = self._token_nll((source, target, source_lengths, target_lengths))
        return -nll.sum(1)

    def _metrics(self, batch: Batch) -> Dict[str, Tensor]:
        nll, labels, logits = self._token_nll(batch)
        counted = labels != IGNORE
        n = counted.sum().clamp_min(1)
        correct = (logits.argmax(-1) == labels) & counted
        return {"loss": nll.sum() / n, "token_accuracy": (correct.sum() / n).detach()}

    def loss(self, batch: Batch) -> Dict[str, Tensor]:
        """Mean cross-entropy (nats) of the target tokens and the END given the source and the
        earlier targets, as "loss", with the teacher-forced "token_accuracy"."""
        return self._metrics(batch)

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> Dict[str, float]:
        return {k: float(v) for k, v in self._metrics(batch).items()}

    # ---- decoding -------------------------------------------------------------------------------

    def _next_log_probs(self, tokens: Tensor, segment_ids: Tensor, positions: Tensor, lengths: Tensor) -> Tensor:
        """log p(next class | row) [N, vocab_size + 1] after each row's last real token."""
        # (``hidden`` reads no first_lengths: the segment ids carry the split)
        h = self.hidden(Packed(tokens, segment_ids, positions, lengths, lengths))
        last = h[torch.arange(h.shape[0], device=h.device), lengths - 1]
        return torch.log_softmax(self.head(last).float(), dim=-1)

    @torch.no_grad()
    def generate(self, source: Tensor, max_len: int, *, beam: int = 1, source_lengths: Optional[Tensor] = None,
                 length_penalty: float = 0.0) -> Generated:
        """Decode a target for each source (content ids [B, Ls], row b real up to
        ``source_lengths[b]``): at most ``max_len`` content ids, stopping at END. ``beam`` = 1 is
        greedy decoding; more runs beam search with that many hypotheses per source, ranked by
        ``log p / n^length_penalty`` (see the module docstring). Call ``eval()`` first when the
        model has dropout."""
        check_content_ids(source, self.vocab_size, "UniLM.generate: source")
        check_positive_int("UniLM.generate", "max_len", max_len)
        check_positive_int("UniLM.generate", "beam", beam)
        if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) \
                or not math.isfinite(length_penalty) or length_penalty < 0:
            raise ValueError(f"UniLM.generate: length_penalty must be a finite number >= 0, got {length_penalty!r}")
        lengths = full_lengths(source, source_lengths, "UniLM.generate: source_lengths")
        batch = source.shape[0]
        # [CLS] source [SEP], then room for max_len generated tokens (segment 1 from there on).
        room = torch.zeros(batch, max_len, dtype=torch.long, device=source.device)
        rows = pack(wrap(source, lengths, start=CLS), lengths + 2, room, torch.zeros_like(lengths))
        prefix, tokens = rows.first_lengths, rows.tokens.clone()
        if beam == 1:
            return self._greedy(tokens, rows.segment_ids, rows.positions, prefix, source.shape[1], max_len)
        return self._beam_search(tokens, rows.segment_ids, rows.positions, prefix, source.shape[1], max_len, beam,
                                 float(length_penalty))

    def _greedy(self, tokens: Tensor, segment_ids: Tensor, positions: Tensor, prefix: Tensor, source_width: int,
                max_len: int) -> Generated:
        state = DecodeState(tokens, prefix, max_len, self.vocab_size)
        for t in range(max_len):
            width = source_width + 2 + t  # every row's tokens so far fit in this width
            log_p = self._next_log_probs(state.tokens[:, :width], segment_ids[:, :width], positions[:, :width],
                                         state.lengths)
            best, cls = log_p.max(dim=-1)
            state.append(t, cls, best)
            if state.done():
                break
        return state.result()

    def _beam_search(self, tokens: Tensor, segment_ids: Tensor, positions: Tensor, prefix: Tensor, source_width: int,
                     max_len: int, beam: int, alpha: float) -> Generated:
        batch, device = tokens.shape[0], tokens.device
        n_classes = self.vocab_size + 1
        segment_ids, positions = segment_ids.repeat_interleave(beam, 0), positions.repeat_interleave(beam, 0)
        state = DecodeState(tokens.repeat_interleave(beam, 0), prefix.repeat_interleave(beam, 0), max_len,
                            self.vocab_size)
        # One live hypothesis per source at the start: the other beams begin at −inf, so the
        # first step expands beam 0 only (no duplicates).
        state.total.view(batch, beam)[:, 1:] = -math.inf
        # A finished hypothesis has one continuation, itself, at no cost: it competes with the
        # live ones without growing.
        stay = torch.full((n_classes,), -math.inf, device=device)
        stay[self.end] = 0.0
        first_row = torch.arange(batch, device=device)[:, None] * beam
        for t in range(max_len):
            width = source_width + 2 + t
            log_p = self._next_log_probs(state.tokens[:, :width], segment_ids[:, :width], positions[:, :width],
                                         state.lengths)
            log_p = torch.where(state.finished[:, None], stay, log_p)
            key = state.total[:, None] + log_p  # [rows, classes]
            if alpha:
                key = key / self._normaliser(state.count + (~state.finished).long(), alpha)[:, None]
            _, pick = key.view(batch, beam * n_classes).topk(beam, dim=1)
            parent = (first_row + torch.div(pick, n_classes, rounding_mode="floor")).reshape(-1)
            cls = (pick % n_classes).reshape(-1)
            chosen = log_p[parent, cls]
            state.reorder(parent)
            state.append(t, cls, chosen)
            if state.done():
                break
        key = state.total
        if alpha:
            key = key / self._normaliser(state.count, alpha)
        return state.result(first_row[:, 0] + key.view(batch, beam).argmax(dim=1))

    @staticmethod
    def _normaliser(count: Tensor, alpha: float) -> Tensor:
        """n^α, the length normalisation of a hypothesis of n predicted tokens (END included)."""
        return count.clamp_min(1).float() ** alpha


def build_unilm(dataset, **overrides) -> UniLM:
    """The ``kexue train unilm`` builder: a text data set (a .txt file of equal-length lines)
    gives the vocabulary; each line is split into source (first half by default, ``--set
    source_length=k``) and target (the rest)."""
    if getattr(dataset, "vocab", None) is None or len(dataset.event_shape) != 1:
        raise ValueError(f"unilm needs a text data set (a .txt file of equal-length lines), got {dataset.name!r} "
                         f"with event shape {list(dataset.event_shape)}")
    width = dataset.event_shape[0]
    if width < 2:
        raise ValueError(f"unilm: lines of {width} character(s) cannot be split into a source and a target")
    if overrides.get("source_length") is None:  # None is the option's "derived" default
        overrides["source_length"] = width // 2
    return UniLM(len(dataset.vocab), **overrides)


# The package ships no corpus: like the poetry VAE, the default data is the poem file that the
# environment variable KEXUE_POEMS names (kexue.data.get_dataset expands it, and explains when
# it is unset).
def continue_lines(model: UniLM, dataset, n: int, generator: Optional[torch.Generator]) -> List[str]:
    """The first ``n`` lines of ``dataset``, each as "source -> greedy continuation" (samples.txt
    of a run, ``kexue sample``); ``generator`` is unused (decoding is greedy)."""
    source, target, _, _ = model.split(dataset.x[:n])
    device = next(model.parameters()).device
    out = model.generate(source.to(device), target.shape[1])
    return [f"{s} -> {t}" for s, t in zip(decode_rows(dataset.vocab, source), decode_rows(dataset.vocab, out.ids))]


register("unilm", build_unilm, default_data="$KEXUE_POEMS", steps=2000, batch_size=64, lr=1e-3, text=continue_lines,
         options=options_of(UniLM, data=("vocab_size",), derived={"source_length": "half the line length"}),
         description="UniLM seq2seq: one RoPE Transformer with the UniLM mask, line = first half -> second half")

__all__ = ["UniLM", "build_unilm"]
