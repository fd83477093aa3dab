"""Quality of the VAEs at an equal training budget: importance-sampled test negative log-likelihood
on the digits (post 变分自编码器（八）; ``kexue.models.vae.likelihood``).

    python -m kexue.bench.vae_quality --steps 2000 [--models vae,bnvae,vmfvae,nvae] [--json PATH]

Every model trains with the same steps, batch size, learning rate and seed through ``kexue.train``
on the fixed digits train split, with its default decoder — for the digits a per-pixel
categorical over the 17 levels, an exact likelihood of the discrete images — so the numbers are
code lengths of the test split: nats per image and bits per dimension (nats / (64·log 2)),
directly comparable with the flows' discrete bits/dim. For each K the estimate
−log (1/K) Σ_j p(x|z_j)p(z_j)/q(z_j|x) is an upper bound on −log p(x) in expectation, and
tightens as K grows. NVAE (registry name "nvae") is included when it is registered.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from kexue.data import get_dataset
from kexue.models.vae.likelihood import log_likelihood
from kexue.train import registry, train
from kexue.train.trainer import derive_seed

MODELS = ["vae", "bnvae", "vmfvae", "nvae"]
KS = [1, 10, 100, 1000]


def _decoder_name(model) -> str:
    """The decoder likelihood of the VAEs of this package; "own" for models that define theirs
    (NVAE: also a per-pixel categorical over the levels)."""
    obs = getattr(model, "observation", None)
    return type(obs).__name__ if obs is not None else "own"


def evaluate_model(name: str, steps: int, batch_size: int, lr: float, ks: List[int], seed: int,
                   out: Path, device: Optional[str] = None) -> Dict:
    """Train registry model ``name`` on the digits and estimate its test NLL for every K."""
    train_ds, test_ds = get_dataset("digits", "train"), get_dataset("digits", "test")
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed("init", seed))
        model = registry.get(name).build(train_ds)
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    res = train(model, train_ds, steps=steps, batch_size=batch_size, out_dir=out, lr=lr, seed=seed, progress=False,
                eval_every=steps, sample_every=steps, test_data=test_ds, device=device)
    train_s = time.perf_counter() - start
    dev = next(model.parameters()).device
    x = test_ds.x.to(dev)
    row = {"model": name, "params": sum(p.numel() for p in model.parameters()), "decoder": _decoder_name(model),
           "steps": steps, "train_seconds": train_s, "test": res["test"], "nll": {}}
    start = time.perf_counter()
    for k in ks:
        gen = torch.Generator(device=dev).manual_seed(derive_seed("nll", seed, k))
        row["nll"][k] = -log_likelihood(model, x, k, generator=gen).mean().item()
    row["nll_seconds"] = time.perf_counter() - start
    return row


def markdown_table(rows: List[Dict], ks: List[int], dim: int) -> str:
    """Rows of ``evaluate_model`` as a markdown table: NLL in nats per image (bits/dim)."""
    head = "| model | params | decoder | " + " | ".join(f"K={k}" for k in ks) + " |"
    lines = [head, "|" + "---|" * (3 + len(ks))]
    for r in rows:
        cells = [f"{r['nll'][k]:.2f} ({r['nll'][k] / (dim * math.log(2)):.3f})" for k in ks]
        lines.append(f"| {r['model']} | {r['params']:,} | {r['decoder']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated registry names; unregistered ones are skipped with a note")
    p.add_argument("--ks", default=",".join(map(str, KS)), help="comma-separated numbers of importance samples")
    p.add_argument("--out", default=None, help="training run directories (default: a temporary directory)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",") if k]
    known = set(registry.names())
    names = [m for m in args.models.split(",") if m]
    for m in [m for m in names if m not in known]:
        print(f"({m} is not registered; skipped)", flush=True)
    names = [m for m in names if m in known]
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="vae-quality-")
    root = Path(args.out or tmp.name)
    rows = []
    try:
        for name in names:
            row = evaluate_model(name, args.steps, args.batch_size, args.lr, ks, args.seed, root / name, args.device)
            rows.append(row)
            print(f"{name:8s} test NLL " + "  ".join(f"K={k}: {row['nll'][k]:.2f}" for k in ks)
                  + f"  (train {row['train_seconds']:.0f} s, NLL {row['nll_seconds']:.0f} s)", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    dim = math.prod(get_dataset("digits", "test").event_shape)
    print(f"\nDigits test split (297 images), {args.steps} steps, batch {args.batch_size}, lr {args.lr}: "
          "importance-sampled NLL, nats per image (bits/dim)\n")
    print(markdown_table(rows, ks, dim))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                                               "seed": args.seed, "ks": ks, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
