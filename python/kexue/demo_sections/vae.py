"""``kexue demo`` section of the variational autoencoders: a VAE with a 2-D latent on the digits
(its latent map), then the Gaussian VAE, BN-VAE and vMF-VAE at 16 latent dimensions side by side
(test bound, KL, importance-sampled NLL, samples)."""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch

from kexue.data import get_dataset

LATENT_MAP_STEPS = 1500
COMPARE_STEPS = 800
NLL_SAMPLES = 100


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def _train(name, train_ds, test_ds, steps, out, **kwargs):
    from kexue.train import registry, train
    from kexue.train.trainer import derive_seed

    with torch.random.fork_rng():
        torch.manual_seed(derive_seed("init", 0))
        model = registry.get(name).build(train_ds, **kwargs)
    res = train(model, train_ds, test_data=test_ds, steps=steps, batch_size=64, out_dir=_fresh(out), progress=False,
                eval_every=steps, sample_every=steps)
    return model, res["test"]


def _sample_panels(models, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from kexue.train.plots import image_grid, to_unit_range

    fig = Figure(figsize=(4 * len(models), 4.3), dpi=100)
    FigureCanvasAgg(fig)
    for i, (name, model) in enumerate(models.items()):
        x = model.sample(64, generator=torch.Generator(device=next(model.parameters()).device).manual_seed(0))
        ax = fig.add_subplot(1, len(models), i + 1)
        ax.imshow(image_grid(to_unit_range(x, model.n_levels), nrow=8)[:, :, 0].numpy(), cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path)


def run(out_dir: Path, scale: float = 1.0) -> None:
    from kexue.models.vae.figures import save_latent_map
    from kexue.models.vae.likelihood import log_likelihood

    out_dir = Path(out_dir)
    print("\n== Variational autoencoders ==")
    train_ds, test_ds = get_dataset("digits", "train"), get_dataset("digits", "test")

    steps = max(1, int(LATENT_MAP_STEPS * scale))
    t0 = time.perf_counter()
    model, test = _train("vae", train_ds, test_ds, steps, out_dir / "vae-2d", latent_dim=2)
    fig = out_dir / "vae-2d" / "latent_map.png"
    save_latent_map(model, fig, x=test_ds.x, labels=test_ds.labels, title="test digits: posterior means")
    print(f"VAE, 2-D latent: {steps} steps in {time.perf_counter() - t0:.0f} s, test -ELBO {test['nelbo']:.2f} "
          f"nats/image (recon {test['recon']:.2f} + KL {test['kl']:.2f}); latent map: {fig}")

    steps = max(1, int(COMPARE_STEPS * scale))
    trained = {}
    for name in ("vae", "bnvae", "vmfvae"):
        t0 = time.perf_counter()
        model, test = _train(name, train_ds, test_ds, steps, out_dir / f"{name}-16d")
        trained[name] = model
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
        nll = -log_likelihood(model, test_ds.x.to(next(model.parameters()).device), NLL_SAMPLES, generator=gen).mean().item()
        extra = ""
        if name == "bnvae":
            extra = f", KL floor {model.kl_lower_bound().item():.2f} (>= {model.guaranteed_kl():.2f} for any theta)"
        elif name == "vmfvae":
            extra = f" (constant: kappa = {model.kappa.item():g})"
        print(f"{name:7s} 16-d latent: {steps} steps in {time.perf_counter() - t0:.0f} s, test -ELBO {test['nelbo']:.2f}, "
              f"KL {test['kl']:.2f}{extra}; importance-sampled NLL (K={NLL_SAMPLES}) {nll:.2f} nats/image "
              f"= {nll / (model.dim * math.log(2)):.3f} bits/dim")
    fig = out_dir / "vae_samples.png"
    _sample_panels(trained, fig)
    print(f"samples (decoder means, rounded to levels): {fig}")
