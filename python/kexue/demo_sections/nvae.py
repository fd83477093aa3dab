"""``kexue demo`` section of NVAE: a small hierarchical VAE trained briefly on the digits (test
bound, importance-sampled NLL, KL per latent group), and a grid of samples at several
temperatures."""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch

from kexue.data import get_dataset

STEPS = 450
BATCH_SIZE = 64
NLL_SAMPLES = 20
TEMPERATURES = (0.6, 0.8, 1.0)


def _save_temperature_grid(model, path: Path, n: int = 64) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from kexue.train.plots import image_grid, to_unit_range

    device = next(model.parameters()).device
    fig = Figure(figsize=(4 * len(TEMPERATURES), 4.3), dpi=100)
    FigureCanvasAgg(fig)
    for i, t in enumerate(TEMPERATURES):
        # The decoder's mean level per pixel: independent per-pixel draws would add noise that
        # hides what the temperature (which scales the latents only) changes.
        x = model.sample(n, temperature=t, generator=torch.Generator(device=device).manual_seed(0), pixels="mean")
        x = x.cpu() / (model.n_levels - 1)  # mean levels are not integers: scale them to [0, 1] here
        ax = fig.add_subplot(1, len(TEMPERATURES), i + 1)
        ax.imshow(image_grid(to_unit_range(x), nrow=8)[:, :, 0].numpy(), cmap="gray", vmin=0,
                  vmax=1, interpolation="nearest")
        ax.set_title(f"NVAE, temperature {t:g} (decoder means)", fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path)


def run(out_dir: Path, scale: float = 1.0) -> None:
    from kexue.models.vae.likelihood import log_likelihood
    from kexue.train import registry, train
    from kexue.train.trainer import derive_seed

    out_dir = Path(out_dir)
    print("\n== NVAE ==")
    train_ds, test_ds = get_dataset("digits", "train"), get_dataset("digits", "test")
    steps = max(1, int(STEPS * scale))
    run_dir = out_dir / "nvae"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed("init", 0))
        # KL warm-up over the first third of this short run (the default assumes a longer one)
        model = registry.get("nvae").build(train_ds, warmup_steps=max(1, steps // 3))
    t0 = time.perf_counter()
    res = train(model, train_ds, test_data=test_ds, steps=steps, batch_size=BATCH_SIZE, out_dir=run_dir,
                progress=False, eval_every=steps, sample_every=steps)
    test = res["test"]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"NVAE ({n_params:,} parameters, {len(model.group_scale)} latent groups): {steps} steps in "
          f"{time.perf_counter() - t0:.0f} s; test -ELBO {test['bpd']:.3f} bits/dim "
          f"(recon {test['recon']:.2f} + KL {test['kl']:.2f} nats/image)")
    device = next(model.parameters()).device
    x = test_ds.x.to(device)
    model.eval()
    with torch.no_grad():
        kl_groups = model.negative_elbo(x, generator=torch.Generator(device=device).manual_seed(0))["kl_groups"]
    print("KL per group, top (coarse) to bottom: " + ", ".join(f"{v:.2f}" for v in kl_groups.mean(0).tolist())
          + " nats/image")
    gen = torch.Generator(device=device).manual_seed(derive_seed("nll", 0))
    nll = -log_likelihood(model, x, NLL_SAMPLES, generator=gen).mean().item()
    print(f"importance-sampled NLL (K={NLL_SAMPLES}) {nll:.2f} nats/image = {nll / (model.dim * math.log(2)):.3f} "
          "bits/dim")
    fig = out_dir / "nvae_temperatures.png"
    _save_temperature_grid(model, fig)
    print(f"samples (decoder means) at temperatures {', '.join(f'{t:g}' for t in TEMPERATURES)}: {fig}")
