"""``kexue demo`` section of the CNN-VAE poetry generator: the plain VAE and the BN-VAE trained
briefly on the poem corpus that the environment variable KEXUE_POEMS names (the package ships
none; the section is skipped without it). Prints the test KL of both (the plain VAE's collapses
towards 0, the BN-VAE's stays above its floor), a few generated poems, and plots the training KL
of both runs."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from kexue.models.vae.poetry import POEMS_ENV

STEPS = 250
BATCH_SIZE = 32
HIDDEN = 64
TAU = 0.5
# A short run: a higher learning rate than the default 1e-3 gets the per-position structure
# (punctuation, common characters) learnt within the budget.
LR = 3e-3
N_POEMS = 4


def _kl_curves(runs, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from kexue.train.checkpoint import METRICS_NAME, read_metrics

    fig = Figure(figsize=(6, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, run_dir in runs:
        rows = [r for r in read_metrics(run_dir / METRICS_NAME) if r.get("split") == "train"]
        ax.plot([r["step"] for r in rows], [r["kl"] for r in rows], label=f"{label}: KL")
        if rows and "kl_bound" in rows[0]:
            ax.plot([r["step"] for r in rows], [r["kl_bound"] for r in rows], "--", label=f"{label}: KL floor")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("KL (nats per poem, train batches)")
    ax.set_title("poetry CNN-VAE: KL collapse without BN")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def run(out_dir: Path, scale: float = 1.0) -> None:
    from kexue.data import get_dataset
    from kexue.models.vae.poetry import PoetryVAE
    from kexue.train import train
    from kexue.train.trainer import derive_seed

    out_dir = Path(out_dir)
    print("\n== Poetry CNN-VAE ==")
    path = os.environ.get(POEMS_ENV)
    if not path:
        print(f"skipped: set {POEMS_ENV} to a .txt file of equal-length poems (one per line) to run it")
        return
    train_ds, test_ds = get_dataset(path, "train"), get_dataset(path, "test")
    steps = max(1, int(STEPS * scale))
    print(f"{Path(path).name}: {len(train_ds.x)} train / {len(test_ds.x)} test poems, vocabulary "
          f"{len(train_ds.vocab)}; {steps} steps each, batch {BATCH_SIZE}")
    runs = []
    for label, bn in (("plain VAE", False), (f"BN-VAE (tau={TAU:g})", True)):
        run_dir = out_dir / ("poetry-bn" if bn else "poetry-plain")
        if run_dir.exists():
            shutil.rmtree(run_dir)
        with torch.random.fork_rng():
            torch.manual_seed(derive_seed("init", 0))
            model = PoetryVAE(train_ds.vocab, train_ds.event_shape[0], hidden=HIDDEN, bn=bn, tau=TAU)
        t0 = time.perf_counter()
        test = train(model, train_ds, test_data=test_ds, steps=steps, batch_size=BATCH_SIZE, lr=LR, out_dir=run_dir,
                     progress=False, eval_every=steps, sample_every=steps)["test"]
        floor = f" (floor {test['kl_bound']:.2f})" if bn else ""
        print(f"{label}: {time.perf_counter() - t0:.0f} s; test KL {test['kl']:.2f}{floor}, recon {test['recon']:.2f}, "
              f"-ELBO {test['loss']:.2f} nats/poem ({test['bits_per_char']:.3f} bits/char)")
        device = next(model.parameters()).device
        model.eval()
        for poem in model.generate(N_POEMS, generator=torch.Generator(device=device).manual_seed(0)):
            print("    " + poem)
        runs.append((label, run_dir))
    fig = out_dir / "poetry_kl.png"
    _kl_curves(runs, fig)
    print(f"training KL of both runs: {fig}")
