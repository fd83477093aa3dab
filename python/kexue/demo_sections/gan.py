"""Demo section: GANs (MODELS.md G1–G3). f-GAN (Jensen–Shannon) on the 8-Gaussians toy, GAN-QP on
the digits, BiGAN-QP samples and reconstructions of held-out digits; prints the MMD of samples
to held-out data before and after training, the toy's mode coverage, and the reconstruction
error, and writes ``gan.png``."""
from __future__ import annotations

import math
import pathlib
import time

import torch

from kexue.data import get_dataset
from kexue.data.toys import GAUSSIANS_COUNT, GAUSSIANS_RADIUS, GAUSSIANS_STD
from kexue.models.gan import FGAN, GANQP, BiGANQP, mmd2
from kexue.models.gan.fit import fit

# Samples drawn for the MMD and the toy's mode statistics.
N_EVAL = 1000
# A toy sample is "on" a mode within this many standard deviations of its centre, and a mode is
# covered when it holds at least a quarter of its fair share of the samples.
MODE_RADIUS_STDS = 3.0
MODE_MIN_SHARE = 0.25


def _mmd_to(model, data: torch.Tensor, seed: int) -> float:
    model.eval()
    with torch.no_grad():
        real = model.to_model_space(data[:N_EVAL])
        fake = model.generator(model.draw_latent(real.shape[0], torch.Generator().manual_seed(seed)))
        return float(mmd2(real, fake))


def _mode_stats(samples: torch.Tensor):
    """(modes covered, fraction of samples within MODE_RADIUS_STDS·σ of some centre)."""
    angles = torch.arange(GAUSSIANS_COUNT) * (2 * math.pi / GAUSSIANS_COUNT)
    centres = GAUSSIANS_RADIUS * torch.stack([angles.cos(), angles.sin()], 1)
    dist, nearest = torch.cdist(samples.float(), centres).min(1)
    on_mode = dist < MODE_RADIUS_STDS * GAUSSIANS_STD
    counts = torch.bincount(nearest[on_mode], minlength=GAUSSIANS_COUNT)
    covered = int((counts >= MODE_MIN_SHARE * len(samples) / GAUSSIANS_COUNT).sum())
    return covered, float(on_mode.float().mean())


def _train(model, data: torch.Tensor, steps: int, batch_size: int, lr: float, test: torch.Tensor, label: str):
    before = _mmd_to(model, test, seed=1)
    start = time.perf_counter()
    fit(model, data, steps, batch_size=batch_size, lr=lr, seed=0, log_every=steps)
    after = _mmd_to(model, test, seed=1)
    n = min(N_EVAL, len(test))
    floor = float(mmd2(model.to_model_space(data[:n]), model.to_model_space(test[:n])))
    print(f"  {label}: {steps} steps in {time.perf_counter() - start:.1f} s; MMD² to held-out data "
          f"{before:.3f} -> {after:.3f} (training data itself: {floor:.3f})")
    return model


def run(out_dir: pathlib.Path, scale: float = 1.0) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from kexue.train.plots import image_grid, to_unit_range

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = lambda n: max(1, int(n * scale))  # noqa: E731
    print("GANs: one loss() per step trains both players (gradients kept apart), Adam β₁ = 0.5")

    toy, toy_test = get_dataset("8gaussians", "train"), get_dataset("8gaussians", "test")
    torch.manual_seed(0)
    fgan = _train(FGAN((2,), divergence="js"), toy.x, steps(2000), 128, 1e-3, toy_test.x,
                  "f-GAN (JS, R1) on 8gaussians")
    toy_samples = fgan.sample(N_EVAL, generator=torch.Generator().manual_seed(2))
    covered, on_mode = _mode_stats(toy_samples)
    print(f"  f-GAN: {covered}/{GAUSSIANS_COUNT} modes covered, {100 * on_mode:.1f}% of samples within "
          f"{MODE_RADIUS_STDS:g}σ of a mode")

    digits, digits_test = get_dataset("digits", "train"), get_dataset("digits", "test")
    torch.manual_seed(0)
    ganqp = _train(GANQP((1, 8, 8), digits.n_levels), digits.x, steps(2000), 64, 2e-4, digits_test.x,
                   "GAN-QP on digits")
    torch.manual_seed(0)
    bigan = _train(BiGANQP((1, 8, 8), digits.n_levels), digits.x, steps(2000), 64, 2e-4, digits_test.x,
                   "BiGAN-QP on digits")
    bigan.eval()
    held_out = digits_test.x[:16]
    with torch.no_grad():
        recon = bigan.reconstruct(digits_test.x)
        err = ((recon - digits_test.x.float()) / (digits.n_levels - 1)).square().mean()
        mean_err = ((digits.x.float().mean(0) - digits_test.x.float()) / (digits.n_levels - 1)).square().mean()
    print(f"  BiGAN-QP: reconstruction MSE of held-out digits {float(err):.4f} (pixels in [0, 1]; "
          f"predicting the mean digit: {float(mean_err):.4f})")

    fig = Figure(figsize=(16, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 4, 1)
    ax.scatter(toy_test.x[:N_EVAL, 0], toy_test.x[:N_EVAL, 1], s=2, label="data")
    ax.scatter(toy_samples[:, 0], toy_samples[:, 1], s=2, label="f-GAN (JS)")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(f"f-GAN (JS) on 8gaussians: {covered}/{GAUSSIANS_COUNT} modes", fontsize=8)
    panels = [
        ("GAN-QP samples", ganqp.sample(64, generator=torch.Generator().manual_seed(2))),
        ("BiGAN-QP samples", bigan.sample(64, generator=torch.Generator().manual_seed(2))),
        ("held-out digits (odd rows) / BiGAN-QP reconstructions",
         torch.stack([held_out.float().view(2, 8, 1, 8, 8), recon[:16].view(2, 8, 1, 8, 8)], 1).reshape(32, 1, 8, 8)),
    ]
    for i, (title, images) in enumerate(panels, start=2):
        ax = fig.add_subplot(1, 4, i)
        ax.imshow(image_grid(to_unit_range(images, digits.n_levels), nrow=8)[:, :, 0].numpy(), cmap="gray",
                  vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path = out_dir / "gan.png"
    fig.savefig(path)
    print(f"  figure: {path}")
