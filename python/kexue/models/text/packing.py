"""Special tokens and the packed ``[CLS] source [SEP] target [SEP]`` layout shared by the
one-Transformer sequence models (UniLM seq2seq, UniVAE).

The models read *content ids* in ``[0, V)`` — what ``kexue.data`` gives for a text file — and
reserve a few extra ids of their own, so no tokenizer is needed::

    PAD = 0, CLS = 1, SEP = 2, content id c -> token c + N_SPECIAL

Their output layer predicts ``V + 1`` classes: the V content ids and ``END`` = V (the closing
``[SEP]``). Sequences of different lengths are right-padded, with their lengths beside them.

A packed batch is two segments per row, each right-padded block squeezed together so that the
row's real tokens are contiguous and its padding is all at the end (``key_lengths`` hides it
from attention)::

    row b:  first[b, :n1[b]]  second[b, :n2[b]]  PAD ...
    segment   0 ... 0           1 ... 1           1 ...     (monotone, as the masks require)

Everything is vectorised (no loop over the batch, no host synchronisation), so it runs as is on
CUDA tensors.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from kexue.ops._common import can_check_values

Tensor = torch.Tensor

PAD, CLS, SEP = 0, 1, 2
N_SPECIAL = 3
# Ignored entries of a label tensor (the default ignore_index of torch's cross-entropy).
IGNORE = -100
# Content-id outputs (generated sequences) past a sequence's end.
NO_TOKEN = -1


class Generated(NamedTuple):
    """Decoded sequences: ``ids`` [B, max_len] content ids (NO_TOKEN past each row's end),
    ``lengths`` [B] their number, ``finished`` [B] whether the row ended with END (else it was
    cut at max_len), and ``log_prob`` [B] the model's total log-probability of the generated
    tokens (END included when finished)."""

    ids: Tensor
    lengths: Tensor
    finished: Tensor
    log_prob: Tensor


class Packed(NamedTuple):
    """A packed batch: ``tokens``, ``segment_ids`` and ``positions`` [B, T] and the number of
    real tokens per row, ``lengths`` [B] (the attention's ``key_lengths``); ``first_lengths``
    [B] is where each row's second segment starts."""

    tokens: Tensor
    segment_ids: Tensor
    positions: Tensor
    lengths: Tensor
    first_lengths: Tensor


def check_positive_int(who: str, name: str, value, minimum: int = 1) -> int:
    """``value`` if it is an int >= ``minimum``, else a ValueError naming ``who`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{who}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_content_ids(ids: Tensor, vocab_size: int, what: str) -> None:
    """A ValueError/TypeError naming ``what`` unless ``ids`` is an integer tensor [B, L]. On the
    CPU the values are checked too (ids in [0, vocab_size)); on CUDA the embedding's device-side
    check catches a bad id without a host synchronisation on every call."""
    if not isinstance(ids, Tensor) or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        got = ids.dtype if isinstance(ids, Tensor) else type(ids).__name__
        raise TypeError(f"{what} must be an integer tensor of content ids [B, L], got {got}")
    if ids.dim() != 2:
        raise ValueError(f"{what} must have shape [B, L], got {list(ids.shape)}")
    if can_check_values(ids) and bool(((ids < 0) | (ids >= vocab_size)).any()):
        raise ValueError(f"{what}: content ids must lie in [0, {vocab_size}), got values in "
                         f"[{int(ids.min())}, {int(ids.max())}]")


def full_lengths(ids: Tensor, lengths: Optional[Tensor], what: str) -> Tensor:
    """``lengths`` as a long tensor [B] on ``ids``' device (checked to lie in [0, L] on the CPU),
    or every row's full width L when None."""
    batch, width = ids.shape
    if lengths is None:
        return torch.full((batch,), width, dtype=torch.long, device=ids.device)
    if not isinstance(lengths, Tensor) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        got = lengths.dtype if isinstance(lengths, Tensor) else type(lengths).__name__
        raise TypeError(f"{what} must be an integer tensor [B] (the real length of each row), got {got}")
    if lengths.shape != (batch,):
        raise ValueError(f"{what} must have shape [{batch}] (one length per row), got {list(lengths.shape)}")
    lengths = lengths.to(device=ids.device, dtype=torch.long)
    if can_check_values(lengths) and bool(((lengths < 0) | (lengths > width)).any()):
        raise ValueError(f"{what} must lie in [0, {width}] (the padded width), got values in "
                         f"[{int(lengths.min())}, {int(lengths.max())}]")
    return lengths


def wrap(ids: Tensor, lengths: Tensor, *, start: Optional[int], end: Optional[int] = SEP) -> Tensor:
    """Content ids [B, L] (row b real up to ``lengths[b]``) as tokens [B, L + 2]:
    ``[start] c_1+N_SPECIAL ... c_n+N_SPECIAL [end] PAD ...``; ``start``/``end`` None leave that
    token out (the width shrinks accordingly)."""
    batch, width = ids.shape
    lead = 0 if start is None else 1
    out_width = width + lead + (0 if end is None else 1)
    j = torch.arange(out_width, device=ids.device)[None, :]
    k = (j - lead).clamp(0, max(width - 1, 0))
    if width:
        content = ids.long().gather(1, k.expand(batch, -1)) + N_SPECIAL
    else:
        content = torch.full((batch, out_width), PAD, dtype=torch.long, device=ids.device)
    n = lengths[:, None]
    out = torch.where((j >= lead) & (j < lead + n), content, torch.full_like(content, PAD))
    if start is not None:
        out = torch.where(j == 0, torch.full_like(out, start), out)
    if end is not None:
        out = torch.where(j == lead + n, torch.full_like(out, end), out)
    return out


def pack(first: Tensor, first_lengths: Tensor, second: Tensor, second_lengths: Tensor, *,
         restart_positions: bool = False) -> Packed:
    """Rows ``first[b, :n1] + second[b, :n2] + PAD...`` of width ``W1 + W2`` (static, so no
    host synchronisation), segment 0 on the first part and 1 from there on, and positions
    ``0, 1, ...`` along the row — or, with ``restart_positions``, starting again at 0 where the
    second segment begins (UniVAE: so the decoder's positions do not tell it the source length)."""
    batch, w1 = first.shape
    w2 = second.shape[1]
    j = torch.arange(w1 + w2, device=first.device)[None, :]
    n1, n2 = first_lengths[:, None], second_lengths[:, None]
    in_first = j < n1
    k2 = j - n1
    in_second = ~in_first & (k2 < n2)
    a = first.gather(1, j.clamp(max=max(w1 - 1, 0)).expand(batch, -1)) if w1 else torch.zeros_like(j).expand(batch, -1)
    b = second.gather(1, k2.clamp(0, max(w2 - 1, 0))) if w2 else torch.zeros_like(k2)
    tokens = torch.where(in_first, a, torch.where(in_second, b, torch.full_like(a, PAD)))
    segment_ids = (~in_first).long().expand(batch, -1)
    positions = torch.where(in_first, j, k2) if restart_positions else j.expand(batch, -1)
    return Packed(tokens, segment_ids.contiguous(), positions.contiguous(), (first_lengths + second_lengths).long(),
                  first_lengths.long())


def next_token_labels(packed: Packed, vocab_size: int, *, from_first: bool) -> Tensor:
    """Labels [B, T] for next-token prediction of the second segment: position i is labelled
    with the output class of token i + 1 when that token is a real second-segment token, else
    IGNORE. Output classes: content token t -> t - N_SPECIAL, ``[SEP]`` -> END = vocab_size.

    ``from_first``: whether the first segment's last position also predicts (UniLM: the source
    ``[SEP]`` predicts the first target token; UniVAE: no, its decoder segment begins with its
    own start token, and a source position must not take part in decoding)."""
    tokens, segment_ids, lengths = packed.tokens, packed.segment_ids, packed.lengths
    nxt = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], PAD)], dim=1)
    nxt_seg = torch.cat([segment_ids[:, 1:], torch.zeros_like(segment_ids[:, :1])], dim=1)
    j = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
    keep = (nxt_seg == 1) & (j + 1 < lengths[:, None])
    if not from_first:
        keep &= segment_ids == 1
    classes = torch.where(nxt == SEP, torch.full_like(nxt, vocab_size), nxt - N_SPECIAL)
    return torch.where(keep, classes, torch.full_like(classes, IGNORE))


def prediction_window(packed: Packed, labels: Tensor, offset: int, width: int) -> Tuple[Tensor, Tensor]:
    """Indices [B, width] of positions ``first_lengths + offset + j`` (j < width) and their
    labels (IGNORE where past the row): the window that holds every labelled position, so that
    the output layer — the costly part for a large vocabulary — runs on it alone."""
    j = torch.arange(width, device=labels.device)[None, :]
    idx = packed.first_lengths[:, None] + offset + j
    inside = (idx >= 0) & (idx < labels.shape[1])
    idx = idx.clamp(0, labels.shape[1] - 1)
    return idx, torch.where(inside, labels.gather(1, idx), torch.full_like(idx, IGNORE))


def classes_to_tokens(classes: Tensor, vocab_size: int) -> Tensor:
    """Output classes (content id or END = vocab_size) as input tokens (END -> [SEP])."""
    return torch.where(classes == vocab_size, torch.full_like(classes, SEP), classes + N_SPECIAL)


def decode_rows(vocab, ids: Tensor) -> list:
    """The strings of content ids [N, L] with NO_TOKEN past each row's end (``Generated.ids``,
    ``UniVAE.sample``), one per row."""
    return [vocab.decode(row[row != NO_TOKEN]) if bool((row != NO_TOKEN).any()) else "" for row in ids.cpu()]


__all__ = ["decode_rows", "CLS", "Generated", "IGNORE", "NO_TOKEN", "N_SPECIAL", "PAD", "Packed", "SEP", "check_content_ids",
           "check_positive_int",
           "classes_to_tokens", "full_lengths", "next_token_labels", "pack", "prediction_window",
           "wrap"]
