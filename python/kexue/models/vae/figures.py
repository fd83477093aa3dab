"""Figures of the VAEs: the 2-D latent map (decoded grid over the latent, post 变分自编码器（一）) next
to the codes of labelled data."""
from __future__ import annotations

import os
from typing import Optional

import torch

from kexue.train.plots import image_grid, to_unit_range


@torch.no_grad()
def save_latent_map(model, path: os.PathLike | str, *, n: int = 15, x: Optional[torch.Tensor] = None,
                    labels: Optional[torch.Tensor] = None, title: Optional[str] = None) -> None:
    """Write a PNG: the model's ``latent_map(n)`` as an n×n image grid and, when data ``x`` is
    given, the posterior means of x in the latent plane (coloured by ``labels``). Needs a model
    with latent_dim = 2 (a Gaussian plane, or the vMF-VAE's circle)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    was_training = model.training
    model.eval()
    try:
        images, _ = model.latent_map(n)
        codes = model.encode(x.to(images.device)).mean.cpu() if x is not None else None
    finally:
        model.train(was_training)
    grid = image_grid(to_unit_range(images.round() if model.n_levels else images, model.n_levels), nrow=n)
    panels = 2 if codes is not None else 1
    fig = Figure(figsize=(5.5 * panels, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, panels, 1)
    ax.imshow(grid[:, :, 0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title("decoded latent grid" if panels == 2 else (title or "decoded latent grid"), fontsize=10)
    if codes is not None:
        ax2 = fig.add_subplot(1, 2, 2)
        colour = labels.cpu().numpy() if labels is not None else None
        sc = ax2.scatter(codes[:, 0].numpy(), codes[:, 1].numpy(), c=colour, cmap="tab10", s=6)
        if labels is not None:
            fig.colorbar(sc, ax=ax2, ticks=range(int(labels.max().item()) + 1))
        ax2.set_xlabel("z₁ (posterior mean)")
        ax2.set_ylabel("z₂")
        ax2.set_aspect("equal", adjustable="datalim")
        ax2.set_title(title or "codes of the data", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.fspath(path))


__all__ = ["save_latent_map"]
