"""What a capsule-network run writes beside its metrics (``kexue train capsnet|matrixcaps``):

- CapsNet: ``reconstructions.png`` (test digits, each row followed by its reconstruction from
  the predicted class capsule) and the posts' experiment, ``overlapping_digits.png`` with
  ``overlapping_digits.json``: two different test digits overlaid, read off as the two longest
  class capsules although the net never saw such an image.
- Matrix capsules: ``confusion.png`` and ``confusion.json``, the test-set confusion matrix.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import torch

from kexue.models.capsules.capsnet import overlapping_digits, top2_accuracy

# Test digits shown in the reconstruction figure (rows of RECON_ROW originals, each followed by
# a row of their reconstructions), overlaid pairs scored and pairs shown.
N_RECON = 32
RECON_ROW = 8
N_PAIRS = 1000
N_PAIRS_SHOWN = 32
# Batch size of the confusion matrix's forward passes.
EVAL_BATCH = 256


def capsnet_outputs(model, run) -> List[Path]:
    from kexue.train import plots

    x = run.test_data.x[:N_RECON].to(run.device)
    v = model.capsules(x)
    pred = v.norm(dim=-1).argmax(1)
    recon = model.reconstruct(v, pred).view(-1, *model.event_shape)
    orig = model._scale(x)
    rows = []
    for start in range(0, len(x), RECON_ROW):
        rows += [orig[start:start + RECON_ROW], recon[start:start + RECON_ROW]]
    path = run.out_dir / "reconstructions.png"
    plots.save_sample_grid(torch.cat(rows), path, nrow=RECON_ROW,
                           title=f"test digits and their reconstructions, step {run.step}")
    written = [path]

    images, pairs = overlapping_digits(run.test_data.x, run.test_data.labels, n=N_PAIRS)
    images, pairs = images.to(run.device), pairs.to(run.device)
    acc = top2_accuracy(model, images, pairs)
    shown = images[:N_PAIRS_SHOWN]
    top2 = model(shown).topk(2, dim=1).indices.sort(1).values.tolist()
    path = run.out_dir / "overlapping_digits.png"
    plots.save_sample_grid(shown, path, n_levels=model.n_levels, nrow=RECON_ROW,
                           title=f"two overlaid test digits: both read off as the top-2 capsules in "
                                 f"{acc:.1%} of {len(images)} pairs (step {run.step})")
    result = {"step": run.step, "pairs": len(images), "top2_exact": acc,
              "shown": [{"digits": sorted(p), "top2": t} for p, t in zip(pairs[:N_PAIRS_SHOWN].tolist(), top2)]}
    (run.out_dir / "overlapping_digits.json").write_text(json.dumps(result, indent=1) + "\n")
    return written + [path, run.out_dir / "overlapping_digits.json"]


def matrixcaps_outputs(model, run) -> List[Path]:
    from kexue.train import plots

    k = model.n_classes
    counts = torch.zeros(k, k, dtype=torch.long)
    for xb, yb in zip(run.test_data.x.split(EVAL_BATCH), run.test_data.labels.split(EVAL_BATCH)):
        pred = model(xb.to(run.device)).argmax(1).cpu()
        counts += torch.bincount(yb.long() * k + pred, minlength=k * k).view(k, k)
    acc = counts.diagonal().sum().item() / max(1, counts.sum().item())
    path = run.out_dir / "confusion.png"
    plots.save_confusion_matrix(counts, path, title=f"test accuracy {acc:.1%}, step {run.step}")
    (run.out_dir / "confusion.json").write_text(json.dumps(
        {"step": run.step, "accuracy": acc, "counts": counts.tolist()}) + "\n")
    return [path, run.out_dir / "confusion.json"]


__all__ = ["capsnet_outputs", "matrixcaps_outputs"]
