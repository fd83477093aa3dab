"""Importance-sampled log-likelihood of latent-variable models (post 变分自编码器（八）：估计样本概率密度;
Burda et al. 2016, "Importance Weighted Autoencoders").

    log p(x) ≈ log (1/K) Σ_{j=1..K} p(x|z_j) p(z_j) / q(z_j|x),   z_j ~ q(z|x),
             = logsumexp_j [log p(x|z_j) + log p(z_j) − log q(z_j|x)] − log K.

The estimate is a stochastic lower bound on log p(x) (Jensen) whose expectation increases with K
to log p(x) as K → ∞ (Burda et al., Theorem 1); at K = 1 its expectation is the ELBO. So the
negative log-likelihood it reports falls (tightens) as K grows.

Protocol
--------
A model takes part by defining

    model.importance_terms(x, k, generator=None) -> Tensor [k, B]

with entry [j, b] = log p(x_b|z_j) + log p(z_j) − log q(z_j|x_b) (nats) for k fresh draws
z_j ~ q(z|x_b), drawn from ``generator`` when one is given. ``log p(x|z)`` must be the model's
likelihood of the data as given (for discrete images, a probability mass of the levels, so that
the result is a code length); p(z) may itself be hierarchical (NVAE: the sum over its groups of
log p(z_l|z_<l) − log q(z_l|z_<l, x)). The model runs in eval mode (BatchNorm with running
statistics, so q(z|x_b) does not depend on the rest of the batch); every VAE of this package
implements it.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

Tensor = torch.Tensor


def _positive(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"log_likelihood: {name} must be a positive integer, got {v!r}")
    return v


def log_likelihood(model: nn.Module, x: Tensor, k: int, *, batch_size: int = 64, k_batch: int = 128,
                   generator: Optional[torch.Generator] = None) -> Tensor:
    """Importance-sampled log p(x) per example, [N] (nats), with ``k`` samples of q(z|x) each.

    Examples go through the model ``batch_size`` at a time and the k samples ``k_batch`` at a
    time (memory grows with batch_size·k_batch); the log-weights of all k samples are kept
    ([k, batch_size] numbers) and combined by one logsumexp. Runs in eval mode without
    gradients and restores the model's mode. Reproducible for a seeded ``generator``.
    """
    if not callable(getattr(model, "importance_terms", None)):
        raise TypeError(f"log_likelihood: {type(model).__name__} has no importance_terms(x, k, generator) method "
                        "(see the protocol in kexue.models.vae.likelihood)")
    if not isinstance(x, Tensor):
        raise TypeError(f"log_likelihood: x must be a tensor batch, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"log_likelihood: x must be a non-empty batch, got shape {list(x.shape)}")
    k = _positive("k", k)
    batch_size = _positive("batch_size", batch_size)
    k_batch = _positive("k_batch", k_batch)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for xb in x.split(batch_size):
                terms = []
                for start in range(0, k, k_batch):
                    terms.append(model.importance_terms(xb, min(k_batch, k - start), generator=generator))
                log_w = torch.cat(terms, dim=0)
                if log_w.shape != (k, xb.shape[0]):
                    raise ValueError(f"log_likelihood: {type(model).__name__}.importance_terms returned shape "
                                     f"{list(log_w.shape)}, expected [k, B] = [{k}, {xb.shape[0]}] in total")
                out.append(torch.logsumexp(log_w, dim=0) - math.log(k))
    finally:
        model.train(was_training)
    return torch.cat(out)


__all__ = ["log_likelihood"]
