"""``kexue demo``: what the library does, end to end, in a few minutes of CPU.

Each family adds a section: a short training run of its models on the bundled data, the
numbers that say how well it went, and figures written under ``out_dir``."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def flows(out_dir: Path, scale: float = 1.0) -> None:
    """RealNVP on two moons (density plot) and Glow on the 8×8 digits (samples, bits/dim)."""
    from kexue.data import toy_entropy  # noqa: F401  (imports the data module early: clear error if broken)
    from kexue.train import train

    print("\n== Normalizing flows ==")
    runs = [
        ("realnvp", "moons", int(3000 * scale), 256, "test NLL {nll:.3f} nats", "density.png"),
        ("glow", "digits", int(2000 * scale), 64, "test {bpd:.3f} bits/dim", "samples.png"),
    ]
    for model, data, steps, batch, fmt, fig in runs:
        out = _fresh(out_dir / f"{model}-{data}")
        t0 = time.perf_counter()
        res = train(model, data, steps=steps, batch_size=batch, out_dir=out, progress=False,
                    eval_every=steps, sample_every=steps)
        print(f"{model} on {data}: {steps} steps in {time.perf_counter() - t0:.0f} s, "
              + fmt.format(**res["test"]) + f"; figure: {out / fig}")


def iresnet(out_dir: Path, scale: float = 1.0) -> None:
    """An i-ResNet fitted to the two moons: the density plot of a flow whose inverse is a
    fixed-point iteration and whose log-det is a power series."""
    from kexue.train import train

    print("\n== Invertible ResNets ==")
    out = _fresh(out_dir / "iresnet-moons")
    steps = int(3000 * scale)
    t0 = time.perf_counter()
    res = train("iresnet", "moons", steps=steps, batch_size=256, out_dir=out, progress=False,
                eval_every=steps, sample_every=steps, model_kwargs={"coeff": 0.97})
    print(f"iresnet on moons: {steps} steps in {time.perf_counter() - t0:.0f} s, test NLL {res['test']['nll']:.3f} "
          f"nats (series of 10 terms); figure: {out / 'density.png'}")


def capsules(out_dir: Path, scale: float = 1.0) -> None:
    """CapsNet on the 8×8 digits, then the posts' experiment: images of two overlaid digits,
    read off as the two longest class capsules (the net never saw such images); then matrix
    capsules with EM routing."""
    from kexue.data import get_dataset, load_digits
    from kexue.models.capsules import overlapping_digits, top2_accuracy
    from kexue.train import registry, train

    print("\n== Capsules ==")
    out = _fresh(out_dir / "capsnet-digits")
    steps = int(600 * scale)
    t0 = time.perf_counter()
    res = train("capsnet", "digits", steps=steps, batch_size=64, out_dir=out, progress=False, eval_every=steps)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    model = registry.get("capsnet").build(get_dataset("digits"))
    model.load_state_dict(ckpt["model_state_dict"])
    images, pairs = overlapping_digits(*load_digits("test"), n=1000)
    print(f"capsnet on digits: {steps} steps in {time.perf_counter() - t0:.0f} s, test accuracy "
          f"{res['test']['acc']:.4f}; two overlaid test digits, both among the top-2 capsules: "
          f"{top2_accuracy(model, images, pairs):.3f} (1000 pairs)")
    out = _fresh(out_dir / "matrixcaps-digits")
    t0 = time.perf_counter()
    res = train("matrixcaps", "digits", steps=steps, batch_size=64, out_dir=out, progress=False, eval_every=steps,
                lr=3e-3)
    print(f"matrix capsules (EM routing) on digits: {steps} steps in {time.perf_counter() - t0:.0f} s, "
          f"test accuracy {res['test']['acc']:.4f}")


# The sections in kexue.demo_sections, in the order the demo runs them (a family whose module is
# missing from an installation is an error, not a silent skip).
FAMILY_SECTIONS = ("diffusion", "vae", "nvae", "poetry", "gan", "infomax", "text", "unilm")


def run(out_dir: str = "runs/demo", scale: float = 1.0) -> None:
    import importlib

    torch.manual_seed(0)
    flows(Path(out_dir), scale)
    iresnet(Path(out_dir), scale)
    capsules(Path(out_dir), scale)
    for name in FAMILY_SECTIONS:
        torch.manual_seed(0)
        importlib.import_module(f"kexue.demo_sections.{name}").run(Path(out_dir), scale)
