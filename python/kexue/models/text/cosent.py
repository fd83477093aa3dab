"""CoSENT (posts CoSENT（一）and CoSENT（二）): a ranking loss on the cosine similarities of
sentence pairs. Every pair (i, j) whose gold similarity is strictly higher than that of another
pair (k, l) should also have the higher cosine::

    loss = log(1 + Σ_{s(i,j) > s(k,l)} exp(λ·(cos(k,l) − cos(i,j)))),     λ = 20.

The gold scores may be binary labels or graded scores (STS-B 0–5); only their order matters.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

DEFAULT_SCALE = 20.0


def _check(cos: Tensor, gold: Tensor, scale: float) -> None:
    if not isinstance(cos, Tensor) or not isinstance(gold, Tensor):
        raise TypeError("cosent_loss: cos and gold must be tensors")
    if cos.dim() != 1 or gold.dim() != 1 or cos.shape != gold.shape:
        raise ValueError(f"cosent_loss: expects cos [n] and gold [n] (one score per pair), "
                         f"got {list(cos.shape)} and {list(gold.shape)}")
    if not cos.is_floating_point():
        raise TypeError(f"cosent_loss: cos must be floating point, got {cos.dtype}")
    if cos.device != gold.device:
        raise ValueError(f"cosent_loss: cos is on {cos.device} but gold on {gold.device}")
    if not (isinstance(scale, (int, float)) and 0 < scale < float("inf")):
        raise ValueError(f"cosent_loss: scale (λ) must be a positive finite number, got {scale!r}")


def _compute_dtype(cos: Tensor) -> torch.dtype:
    # half/bfloat16 scores are summed in float32 (λ·cos spans ±20: exp needs the range)
    return torch.float32 if cos.dtype in (torch.float16, torch.bfloat16) else cos.dtype


def cosent_loss(cos: Tensor, gold: Tensor, scale: float = DEFAULT_SCALE) -> Tensor:
    """The CoSENT loss of ``n`` pairs in O(n log n) time and O(n) memory.

    Sort the pairs by gold score. For a pair p, the inner sum over the pairs q ranked strictly
    below it factorises: Σ_q exp(λ cos_q − λ cos_p) = exp(LSE_{q: g_q < g_p}(λ cos_q) − λ cos_p),
    and LSE over "all pairs with a smaller gold score" is the running ``logcumsumexp`` of the
    sorted λ·cos, read just before p's group of equal gold scores (ties are not ordered, so they
    contribute nothing to each other). The loss is then ``log(1 + Σ_p exp(term_p))`` taken as a
    logsumexp with a zero term, in log space throughout.

    ``cos`` [n]: the model's similarity of each pair (usually a cosine); ``gold`` [n]: gold
    scores or labels (any real or integer dtype). Returns a 0-d tensor; 0 for n < 2 or when all
    gold scores are equal.
    """
    _check(cos, gold, scale)
    out_dtype = cos.dtype
    cos = cos.to(_compute_dtype(cos))
    if gold.dtype == torch.bool:
        gold = gold.to(torch.uint8)  # argsort has no bool kernel on every backend
    n = cos.shape[0]
    if n == 0:
        # keep the graph connected so that backward() works on an empty batch
        return (cos.sum() * 0).to(out_dtype)
    order = torch.argsort(gold, stable=True)
    g = gold[order]
    z = scale * cos[order]
    prefix = torch.logcumsumexp(z, dim=0)
    # index of the first element of each run of equal gold scores, for every position
    arange = torch.arange(n, device=cos.device)
    starts = torch.ones(n, dtype=torch.bool, device=cos.device)
    starts[1:] = g[1:] != g[:-1]
    group_start = torch.cummax(torch.where(starts, arange, torch.zeros_like(arange)), dim=0).values
    has_lower = group_start > 0
    lower_lse = prefix[(group_start - 1).clamp_min(0)]
    neg_inf = torch.full_like(z, float("-inf"))
    # masked entries carry -inf: their gradient through torch.where is exactly zero
    terms = torch.where(has_lower, lower_lse - z, neg_inf)
    loss = torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0)
    return loss.to(out_dtype)


def reference_cosent_loss(cos: Tensor, gold: Tensor, scale: float = DEFAULT_SCALE) -> Tensor:
    """The n×n formula of the post, term by term: the test oracle for :func:`cosent_loss`."""
    _check(cos, gold, scale)
    out_dtype = cos.dtype
    cos = cos.to(_compute_dtype(cos))
    # diff[p, q] = λ(cos_q − cos_p), kept where gold_p > gold_q
    diff = scale * (cos[None, :] - cos[:, None])
    ordered = gold[:, None] > gold[None, :]
    terms = diff[ordered]
    return torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0).to(out_dtype)


# The brief and the tests call the dense oracle by this name as well.
cosent_loss_dense = reference_cosent_loss


def pair_cosine(u: Tensor, v: Tensor, eps: float = 1e-8) -> Tensor:
    """cos(u_i, v_i) for each row: the similarity a bi-encoder feeds to CoSENT."""
    if u.shape != v.shape or u.dim() != 2:
        raise ValueError(f"pair_cosine: expects u and v of the same shape [n, D], got {list(u.shape)} and {list(v.shape)}")
    return torch.nn.functional.cosine_similarity(u, v, dim=1, eps=eps)


__all__ = ["DEFAULT_SCALE", "cosent_loss", "cosent_loss_dense", "pair_cosine", "reference_cosent_loss"]
