"""A small training loop that honours a model's ``adam_betas``.

``kexue.train`` builds Adam with its default betas (0.9, 0.999); the GANs train with β₁ = 0.5
(``AdversarialModel.adam_betas``), so the demos and tests train them here. The loop is otherwise
the trainer's: one ``model.loss(batch)`` and one optimizer step per batch. Any model with
``loss(batch)`` works (without ``adam_betas`` it gets (0.9, 0.999)).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

Tensor = torch.Tensor

DEFAULT_LR = 2e-4  # DCGAN's learning rate, with β₁ = 0.5


def fit(model: nn.Module, data: Tensor, steps: int, *, batch_size: int = 64, lr: float = DEFAULT_LR,
        seed: int = 0, log_every: Optional[int] = None) -> List[Dict[str, float]]:
    """Train ``model`` in place on random batches of ``data`` (with replacement across batches)
    for ``steps`` Adam steps; returns the per-step metrics of ``loss`` every ``log_every`` steps
    (default: every step). All randomness comes from ``seed`` (the global RNG is forked, so the
    caller's stream is untouched)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"fit: steps must be a non-negative integer, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= len(data):
        raise ValueError(f"fit: batch_size must be in [1, {len(data)}], got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"fit: lr must be positive, got {lr!r}")
    log_every = log_every or 1
    param = next(model.parameters())
    betas = getattr(model, "adam_betas", (0.9, 0.999))
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    history: List[Dict[str, float]] = []
    devices = [param.device] if param.device.type == "cuda" else []
    model.train()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        batches = torch.Generator(device="cpu").manual_seed(seed)
        for step in range(1, steps + 1):
            idx = torch.randint(0, len(data), (batch_size,), generator=batches)
            out = model.loss(data[idx].to(param.device))
            out = out if isinstance(out, dict) else {"loss": out}
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            if step % log_every == 0:
                history.append({"step": step, **{k: float(v.detach()) for k, v in out.items()}})
    return history


__all__ = ["DEFAULT_LR", "fit"]
