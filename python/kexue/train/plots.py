"""Figures of a training run: sample grids for images, density maps for 2-D data.

matplotlib is imported only when a figure is drawn, and only through its object-oriented API
with the Agg canvas: nothing here switches the pyplot backend of the calling process (a
notebook keeps its own).
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional

import torch

# Density map: grid points per axis, and the margin added around the data's bounding box as a
# fraction of its larger side.
DENSITY_GRID = 200
DENSITY_MARGIN = 0.1
# Density map: most data points drawn in the data panel (more only blacken the plot).
MAX_SCATTER_POINTS = 5000
# Grid points per log_prob call when evaluating the density map.
LOG_PROB_CHUNK = 10000


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def to_unit_range(samples: torch.Tensor, n_levels: Optional[int] = None) -> torch.Tensor:
    """Samples as floats in [0, 1] for display.

    Integer levels (an integer dtype, or integral floats above 1 when the data has ``n_levels``)
    are divided by ``n_levels - 1`` (or by their maximum when ``n_levels`` is unknown);
    everything else is taken to be in [0, 1] already and clamped.
    """
    x = samples.detach().cpu()
    if not x.dtype.is_floating_point:
        top = (n_levels - 1) if n_levels else max(int(x.max().item()), 1) if x.numel() else 1
        return (x.double() / top).clamp(0, 1).float()
    x = x.float()
    finite = torch.isfinite(x)
    x = torch.where(finite, x, torch.zeros_like(x))
    if n_levels and n_levels > 2 and x.numel() and bool((x == x.round()).all()) and x.max().item() > 1:
        return (x / (n_levels - 1)).clamp(0, 1)
    return x.clamp(0, 1)


def image_grid(images: torch.Tensor, nrow: Optional[int] = None, pad: int = 1) -> torch.Tensor:
    """Tile images [N, C, H, W] (values in [0, 1]) into one [rows·(H+pad)+pad, cols·(W+pad)+pad, C]
    image with a white ``pad``-pixel border between tiles."""
    if images.dim() != 4:
        raise ValueError(f"image_grid: expected images [N, C, H, W], got shape {list(images.shape)}")
    n, c, h, w = images.shape
    cols = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    grid = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid.permute(1, 2, 0)


def save_sample_grid(samples: torch.Tensor, path: os.PathLike | str, *, n_levels: Optional[int] = None,
                     title: Optional[str] = None, nrow: Optional[int] = None) -> None:
    """Write a PNG grid of image samples [N, C, H, W] (``nrow`` per row, default square): grey
    for one channel, RGB for three (other channel counts show the first channel)."""
    grid = image_grid(to_unit_range(samples, n_levels), nrow=nrow)
    if grid.shape[2] == 3:
        img, kw = grid.numpy(), {}
    else:
        img, kw = grid[:, :, 0].numpy(), {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    h, w = img.shape[:2]
    scale = 6.0 / max(h, w)
    fig = _figure(max(w * scale, 2.0), max(h * scale, 2.0) + (0.4 if title else 0.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(img, interpolation="nearest", **kw)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(os.fspath(path))


def plot_range(data: torch.Tensor, margin: float = DENSITY_MARGIN):
    """A square box (x_lo, x_hi, y_lo, y_hi) around 2-D data, widened by ``margin``."""
    d = data.detach().float().cpu()
    d = d[torch.isfinite(d).all(1)]
    if len(d) == 0:
        return (-3.0, 3.0, -3.0, 3.0)
    lo, hi = d.min(0).values, d.max(0).values
    centre, half = (lo + hi) / 2, ((hi - lo).max().item() / 2) * (1 + 2 * margin)
    half = max(half, 1e-3)
    cx, cy = centre.tolist()
    return (cx - half, cx + half, cy - half, cy + half)


def density_on_grid(log_prob: Callable[[torch.Tensor], torch.Tensor], box, size: int = DENSITY_GRID,
                    device=None, dtype=torch.float32) -> torch.Tensor:
    """exp(log_prob) at ``size × size`` points of ``box``; returns [size (y), size (x)] on the CPU,
    with non-finite values as 0."""
    x_lo, x_hi, y_lo, y_hi = box
    xs = torch.linspace(x_lo, x_hi, size, dtype=dtype)
    ys = torch.linspace(y_lo, y_hi, size, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    out = []
    for chunk in pts.split(LOG_PROB_CHUNK):
        lp = log_prob(chunk.to(device) if device is not None else chunk)
        out.append(lp.detach().float().cpu().reshape(-1))
    dens = torch.exp(torch.cat(out)).reshape(size, size)
    return torch.nan_to_num(dens, nan=0.0, posinf=0.0, neginf=0.0)


def save_density_plot(path: os.PathLike | str, data: torch.Tensor, *, density: Optional[torch.Tensor] = None,
                      box=None, samples: Optional[torch.Tensor] = None, title: Optional[str] = None,
                      notes: str = "") -> None:
    """Two panels: the model (heat map of ``density`` over ``box``, samples scattered on top)
    next to a scatter of the data. Either model part may be missing (``notes`` says why)."""
    box = box or plot_range(data)
    fig = _figure(10.0, 5.0)
    ax_m, ax_d = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    if density is not None:
        ax_m.imshow(density.numpy(), origin="lower", extent=box, cmap="viridis", aspect="auto",
                    interpolation="bilinear")
    else:
        ax_m.set_facecolor("0.9")
    if samples is not None:
        s = samples.detach().float().cpu()
        ax_m.scatter(s[:, 0].numpy(), s[:, 1].numpy(), s=2, c="tab:red", alpha=0.5, linewidths=0)
    parts = ["model: " + ("density" if density is not None else "no density")
             + (" + samples" if samples is not None else "")]
    if notes:
        parts.append(notes)
    ax_m.set_title("\n".join(parts), fontsize=9)
    d = data.detach().float().cpu()
    if len(d) > MAX_SCATTER_POINTS:
        d = d[torch.linspace(0, len(d) - 1, MAX_SCATTER_POINTS).long()]
    ax_d.scatter(d[:, 0].numpy(), d[:, 1].numpy(), s=2, c="k", alpha=0.4, linewidths=0)
    ax_d.set_title("data", fontsize=9)
    for ax in (ax_m, ax_d):
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(os.fspath(path))


def save_confusion_matrix(counts: torch.Tensor, path: os.PathLike | str, *, title: Optional[str] = None) -> None:
    """A heat map of a [K, K] confusion matrix (rows: true class, columns: predicted), each cell
    labelled with its count."""
    c = counts.detach().cpu().long()
    k = c.shape[0]
    fig = _figure(1.0 + 0.5 * k, 0.8 + 0.5 * k)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(c.numpy(), cmap="Blues", interpolation="nearest")
    top = max(int(c.max().item()), 1)
    for i in range(k):
        for j in range(k):
            v = int(c[i, j])
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > top / 2 else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path))


__all__ = ["density_on_grid", "image_grid", "plot_range", "save_confusion_matrix", "save_density_plot",
           "save_sample_grid", "to_unit_range"]
