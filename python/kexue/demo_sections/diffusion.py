"""``kexue demo`` section: a DDPM on the two moons, trained once and sampled three ways."""
from __future__ import annotations

import shutil
import time
from pathlib import Path


def run(out_dir: Path, scale: float = 1.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kexue.bench.diffusion_quality import sampler_rows, score, train_toy
    from kexue.data import get_dataset

    print("\n== Diffusion ==")
    out_dir = Path(out_dir)
    run_dir = out_dir / "ddpm-moons"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    steps = max(1, int(1000 * scale))
    t0 = time.perf_counter()
    model = train_toy("moons", steps, out_dir)
    print(f"ddpm on moons: {steps} training steps in {time.perf_counter() - t0:.0f} s")
    held_out = get_dataset("moons", "test", n=2000)
    floor = score(get_dataset("moons", "test", n=2000, seed=1).x, held_out.x)
    rows = sampler_rows(model, held_out.x, 2000)
    for r in rows:
        print(f"  {r['sampler']:<12} MMD² {r['mmd2']:.5f}  sliced W2 {r['sw2']:.4f}  ({r['seconds']:.1f} s for 2000 samples)")
    print(f"  {'held-out':<12} MMD² {floor['mmd2']:.5f}  sliced W2 {floor['sw2']:.4f}  (a second draw of the data)")
    fig, axes = plt.subplots(1, len(rows) + 1, figsize=(4 * (len(rows) + 1), 4), sharex=True, sharey=True)
    panels = [("data", held_out.x)] + [(r["sampler"], r["samples"]) for r in rows]
    for ax, (title, pts) in zip(axes, panels):
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=2, alpha=0.5)
        ax.set_title(title)
        ax.set_aspect("equal")
    fig.tight_layout()
    path = run_dir / "samplers.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"figure: {path}")
