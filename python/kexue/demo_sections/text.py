"""``kexue demo`` section for sentence matching and the small numeric tools of the posts:
a CoSENT bi-encoder on STS-B (when $KEXUE_STSB names a directory with the tsv files), the
automatic threshold, unargmaxable classes of a softmax head, the non-square volume, and the
skipping-rope curve."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

STSB_ENV = "KEXUE_STSB"


def _sts(scale: float):
    """Train a bi-encoder with CoSENT for a few seconds; return dev cosines and gold scores (or None)."""
    from kexue.models.text import (PairData, Vocabulary, Whitening, build_biencoder, evaluate_sts, load_sts_dir,
                                   pair_cosine, train_pairs)

    directory = os.environ.get(STSB_ENV)
    if not directory:
        print(f"STS-B: skipped (set {STSB_ENV} to a directory with sts-train.tsv, sts-dev.tsv and sts-test.tsv)")
        return None
    splits = load_sts_dir(directory)
    train, dev = splits["train"], splits["dev"]
    vocab = Vocabulary.build(train.first + train.second)
    torch.manual_seed(0)
    model = build_biencoder(vocab, dim=128, layers=0)
    model.eval()
    before = evaluate_sts(model.encode_texts(dev.first), model.encode_texts(dev.second), dev.scores)
    seconds = 20.0 * scale
    data = PairData.from_texts(vocab, train.first, train.second, train.scores)
    losses = train_pairs(model, data, 100_000, 64, 2e-3, torch.Generator().manual_seed(0), time_limit=seconds)
    va, vb = model.encode_texts(dev.first).double(), model.encode_texts(dev.second).double()
    after = evaluate_sts(va, vb, dev.scores)
    whitening = Whitening().fit(model.encode_texts(train.first + train.second).double())
    whitened = evaluate_sts(va, vb, dev.scores, whitening)
    print(f"STS-B bi-encoder (word vectors, mean pooling) trained with CoSENT for {len(losses)} steps ({seconds:.0f} s): "
          f"dev Spearman {100 * before:.1f} untrained → {100 * after:.1f} trained → {100 * whitened:.1f} whitened "
          f"(python -m kexue.bench.sts for the full comparison with a cross-encoder)")
    return pair_cosine(va, vb), dev.scores


def _threshold(sts) -> None:
    from kexue.models.text import best_threshold

    if sts is not None:
        scores, gold = sts
        labels, what = (gold >= 3.0).long(), "STS-B dev cosines, pairs with gold >= 3 as positives"
    else:
        g = torch.Generator().manual_seed(0)
        labels = (torch.rand(2000, generator=g) < 0.4).long()
        scores, what = torch.randn(2000, generator=g) + 1.5 * labels, "synthetic scores N(0,1) vs N(1.5,1), 40% positives"
    for metric in ("acc", "f1"):
        t, v = best_threshold(scores, labels, metric)
        print(f"best threshold for {metric}: {t:.4f} → {metric} {v:.4f} ({what})")


def _unargmaxable() -> None:
    from kexue.analysis import unargmaxable

    g = torch.Generator().manual_seed(0)
    v, d = 2000, 6
    w = torch.randn(v, d, generator=g)
    w = w / w.norm(dim=1, keepdim=True) * (1 + 0.05 * torch.rand(v, 1, generator=g))  # near a sphere: mostly vertices
    planted = [7, 1234]
    for k in planted:  # a convex combination of three other rows: strictly inside the hull
        lam = torch.softmax(torch.randn(3, generator=g), 0)
        w[k] = lam @ w[torch.tensor([1, 2, 3]) + k]
    res = unargmaxable(w)
    found = res.unargmaxable.tolist()
    print(f"unargmaxable classes of a random {v}×{d} softmax head with 2 planted interior rows {planted}: "
          f"{len(found)} found ({found[:8]}{'…' if len(found) > 8 else ''}; planted ones among them: "
          f"{all(k in found for k in planted)}); {res.n_lp} of {v} classes needed an LP, {res.seconds:.1f} s")
    bias = torch.zeros(v)
    bias[planted] = 1.0  # a large enough bias lifts an interior row above the hull
    res_b = unargmaxable(w, bias)
    print(f"with bias +1 on the planted rows: {res_b.unargmaxable.numel()} unargmaxable; planted rows argmaxable: "
          f"{[bool(res_b.argmaxable[k]) for k in planted]}")


def _volume() -> None:
    from kexue.analysis import log_volume, volume

    g = torch.Generator().manual_seed(0)
    b = torch.randn(64, 3, dtype=torch.float64, generator=g)
    gram = torch.linalg.det(b.t() @ b).sqrt()
    print(f"volume of 3 random vectors in R^64: {float(volume(b)):.4f} (√det(BᵀB) = {float(gram):.4f}); "
          f"log-volume of 200 columns in R^256: {float(log_volume(torch.randn(256, 200, generator=g, dtype=torch.float64))):.2f}")


def _jump_rope(out_dir: Path) -> None:
    from kexue.analysis import jump_rope_curve, plot_jump_rope

    curves = [jump_rope_curve(r, 1.0, 2 * math.pi) for r in (1.05, 1.3, 1.8, 2.6)]
    pole = jump_rope_curve(1.5, 1.0, 2 * math.pi, gravity=9.81)
    for c in curves:
        print(f"skipping rope ℓ/d = {c.length:.2f} (d = 1 m): height {c.max_height:.3f} m, tension at the hands "
              f"{c.end_tensions[0]:.2f} N (ρ = 1 kg/m, 1 turn/s); BVP residual {c.residual:.1e}")
    print(f"rope on a vertical pole (ℓ/d = 1.5, d = 1 m, 1 turn/s, gravity along the axis): height {pole.max_height:.3f} m, "
          f"tension top/bottom {pole.end_tensions[0]:.1f}/{pole.end_tensions[1]:.1f} N")
    path = plot_jump_rope(curves + [pole], out_dir / "jump_rope.png")
    print(f"figure: {path}")


def run(out_dir: Path, scale: float = 1.0) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print("\n== Sentence matching and numeric tools ==")
    t0 = time.perf_counter()
    sts = _sts(scale)
    _threshold(sts)
    _unargmaxable()
    _volume()
    _jump_rope(out_dir)
    print(f"(section took {time.perf_counter() - t0:.0f} s)")
