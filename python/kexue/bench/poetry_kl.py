"""KL collapse in the CNN-VAE poetry generator, with and without BN on the latent (posts
基于CNN和VAE的作诗机器人 and 变分自编码器（五）：VAE + BN = 更好的VAE).

    python -m kexue.bench.poetry_kl --data quatrains5.txt --steps 1000 [--tau 0.5] [--json PATH]

Trains ``PoetryVAE`` on the file's train split once plainly and once per τ with ``bn=True``,
from the same seed (same initial encoder/decoder weights where the two share them, the same
batches) and with the same budget, then reports on the test split, per poem in nats:

- KL(q(z|x) ‖ N(0, I)), and the BN floor −½ Σ log γ_σ² where there is one;
- active units: latent dimensions whose posterior mean varies across the test poems
  (Var_x E_q[z_i] > 0.01; Burda et al. 2016) — 0 means z is ignored, the collapse;
- reconstruction −log p(x|z), the negative ELBO, and the importance-sampled NLL with K samples
  (also in bits per character);

and a few poems generated from random z by each model.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from kexue.data import get_dataset
from kexue.models.vae.likelihood import log_likelihood
from kexue.models.vae.poetry import PoetryVAE
from kexue.train import train
from kexue.train.trainer import derive_seed, evaluate

# A latent dimension is active when its posterior mean varies across the data by more than this.
ACTIVE_UNIT_THRESHOLD = 0.01


@torch.no_grad()
def active_units(model: PoetryVAE, x: torch.Tensor, batch_size: int = 256) -> int:
    """Number of latent dimensions i with Var_x E_q[z_i | x] > ACTIVE_UNIT_THRESHOLD."""
    was_training = model.training
    model.eval()
    try:
        means = torch.cat([model.posterior(xb).mean for xb in x.split(batch_size)])
    finally:
        model.train(was_training)
    return int((means.var(dim=0, unbiased=False) > ACTIVE_UNIT_THRESHOLD).sum())


def run_variant(label: str, train_ds, test_ds, *, bn: bool, tau: float, steps: int, batch_size: int, lr: float,
                hidden: int, latent_dim: int, k: int, seed: int, n_poems: int, out: Path,
                device: Optional[str]) -> Dict:
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed("init", seed))
        model = PoetryVAE(train_ds.vocab, train_ds.event_shape[0], hidden=hidden, latent_dim=latent_dim,
                          bn=bn, tau=tau)
    start = time.perf_counter()
    train(model, train_ds, test_data=test_ds, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
          out_dir=out, progress=False, eval_every=steps, sample_every=steps, device=device)
    seconds = time.perf_counter() - start
    dev = next(model.parameters()).device
    x = test_ds.x.to(dev)
    model.eval()
    stats = evaluate(model, x, 256, seed=seed, device=dev)
    gen = torch.Generator(device=dev).manual_seed(derive_seed("nll", seed))
    # batch_size 16: k·16 decoded poems of L×V logits each at a time
    nll = -log_likelihood(model, x, k, batch_size=16, generator=gen).mean().item()
    poems = model.generate(n_poems, generator=torch.Generator(device=dev).manual_seed(derive_seed("poems", seed)))
    length = train_ds.event_shape[0]
    return {"model": label, "bn": bn, "tau": tau if bn else None, "params": sum(p.numel() for p in model.parameters()),
            "kl": stats["kl"], "kl_floor": stats.get("kl_bound"), "active_units": active_units(model, x),
            "latent_dim": latent_dim, "recon": stats["recon"], "nelbo": stats["loss"], "nll": nll,
            "nll_bits_per_char": nll / (length * math.log(2)), "train_seconds": seconds, "poems": poems}


def markdown_table(rows: List[Dict], k: int) -> str:
    lines = [f"| model | KL | KL floor | active units | recon | −ELBO | NLL (K={k}) | bits/char | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        floor = "—" if r["kl_floor"] is None else f"{r['kl_floor']:.2f}"
        lines.append(f"| {r['model']} | {r['kl']:.2f} | {floor} | {r['active_units']}/{r['latent_dim']} | "
                     f"{r['recon']:.2f} | {r['nelbo']:.2f} | {r['nll']:.2f} | {r['nll_bits_per_char']:.3f} | "
                     f"{r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a UTF-8 .txt file of equal-length poems, one per line")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=64, help="width of the gated CNNs (the post uses 128)")
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--tau", default="0.5", help="comma-separated τ values for the BN runs")
    p.add_argument("--k", type=int, default=20, help="importance samples for the test NLL")
    p.add_argument("--poems", type=int, default=5, help="poems to generate per model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not str(args.data).endswith(".txt"):
        p.error(f"--data must be a .txt file of equal-length lines, got {args.data!r}")
    taus = [float(t) for t in args.tau.split(",") if t]
    train_ds, test_ds = get_dataset(args.data, "train"), get_dataset(args.data, "test")
    print(f"{args.data}: {len(train_ds.x)} train / {len(test_ds.x)} test poems of {train_ds.event_shape[0]} "
          f"characters, vocabulary {len(train_ds.vocab)}", flush=True)
    variants = [("plain VAE", False, 0.0)] + [(f"BN-VAE τ={t:g}", True, t) for t in taus]
    rows = []
    with tempfile.TemporaryDirectory(prefix="poetry-kl-") as tmp:
        for i, (label, bn, tau) in enumerate(variants):
            row = run_variant(label, train_ds, test_ds, bn=bn, tau=tau, steps=args.steps, batch_size=args.batch_size,
                              lr=args.lr, hidden=args.hidden, latent_dim=args.latent_dim, k=args.k, seed=args.seed,
                              n_poems=args.poems, out=Path(tmp) / str(i), device=args.device)
            rows.append(row)
            print(f"{label}: KL {row['kl']:.2f}, NLL {row['nll']:.2f} nats/poem ({row['train_seconds']:.0f} s)",
                  flush=True)
    print(f"\nTest split, nats per poem; {args.steps} steps, batch {args.batch_size}, lr {args.lr}, "
          f"hidden {args.hidden}, latent {args.latent_dim}, seed {args.seed}\n")
    print(markdown_table(rows, args.k))
    for r in rows:
        print(f"\n{r['model']}, poems from random z:")
        for poem in r["poems"]:
            print("  " + poem)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"data": args.data, "steps": args.steps, "batch_size": args.batch_size,
                                               "lr": args.lr, "hidden": args.hidden, "latent_dim": args.latent_dim,
                                               "k": args.k, "seed": args.seed, "rows": rows},
                                              indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
