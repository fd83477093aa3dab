"""``kexue demo`` section of the one-Transformer sequence models (MODELS.md E2, E3).

- UniLM seq2seq trained briefly to reverse digit strings of lengths 3-8 (always available):
  held-out exact-match accuracy of greedy and beam decoding, and a few examples.
- UniVAE trained briefly on random 6-digit strings, where only the latents can tell the decoder
  what to write: with vMF latents (the post's choice) the reconstructions are far above chance;
  with Gaussian latents the KL collapses to ~0 and the decoder ignores them. Also: decoding
  one string's lower latent with another's upper latent (what each scale carries), samples.
- With KEXUE_POEMS set, UniVAE also trains briefly on that poem corpus: a reconstruction and a
  few sampled poems (qualitative; a real run needs far more steps).

Plots the training curves of the runs.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from kexue.models.vae.poetry import POEMS_ENV

DIGITS = 10
UNILM_STEPS = 250
UNILM_WIDTH = 8
UNIVAE_STEPS = 250
UNIVAE_LENGTH = 6
POEM_STEPS = 120
BATCH_SIZE = 64
# A short run: a higher learning rate than the trainer's default 1e-3.
LR = 3e-3
N_TEST = 300
BEAM = 4


def reversal_pairs(n: int, generator: torch.Generator, width: int = UNILM_WIDTH, min_len: int = 3):
    """(source, target, lengths): random digit strings of lengths min_len..width, right-padded
    with 0, and their reversals."""
    source = torch.randint(0, DIGITS, (n, width), generator=generator)
    lengths = torch.randint(min_len, width + 1, (n,), generator=generator)
    j = torch.arange(width)[None, :]
    real = j < lengths[:, None]
    target = source.gather(1, (lengths[:, None] - 1 - j).clamp(min=0))
    return torch.where(real, source, 0), torch.where(real, target, 0), lengths


def _fit(model, batches, steps: int) -> List[Dict[str, float]]:
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    history = []
    for _ in range(steps):
        out = model.loss(batches())
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        opt.step()
        history.append({k: float(v.detach()) for k, v in out.items()})
    model.eval()
    return history


def _exact(out, target: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    j = torch.arange(out.ids.shape[1])[None, :]
    padded = torch.full_like(out.ids, -1)
    padded[:, : target.shape[1]] = target
    want = torch.where(j < lengths[:, None], padded, -1)
    return out.finished & (out.lengths == lengths) & (out.ids == want).all(1)


def _digits(ids: torch.Tensor, n: int) -> str:
    return "".join(str(int(d)) for d in ids[:n])


def _unilm(steps: int) -> List[Dict[str, float]]:
    from kexue.models.text.unilm import UniLM

    torch.manual_seed(0)
    model = UniLM(DIGITS, dim=64, heads=4, layers=2)
    g = torch.Generator().manual_seed(0)

    def batches():
        source, target, lengths = reversal_pairs(BATCH_SIZE, g)
        return source, target, lengths, lengths

    t0 = time.perf_counter()
    history = _fit(model, batches, steps)
    source, target, lengths = reversal_pairs(N_TEST, torch.Generator().manual_seed(1))
    greedy = model.generate(source, UNILM_WIDTH + 2, source_lengths=lengths)
    beam = model.generate(source, UNILM_WIDTH + 2, source_lengths=lengths, beam=BEAM)
    better = (beam.log_prob > greedy.log_prob + 1e-4).float().mean().item()
    worse = (beam.log_prob < greedy.log_prob - 1e-4).float().mean().item()
    print(f"UniLM (reverse digit strings of length 3-{UNILM_WIDTH}), {steps} steps, "
          f"{time.perf_counter() - t0:.0f} s: loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}")
    print(f"  held-out exact match ({N_TEST} strings): greedy {_exact(greedy, target, lengths).float().mean():.3f}, "
          f"beam {BEAM} {_exact(beam, target, lengths).float().mean():.3f}; beam more probable than greedy on "
          f"{better:.1%}, less on {worse:.1%}")
    for i in range(3):
        n = int(lengths[i])
        print(f"    {_digits(source[i], n)} -> greedy {_digits(greedy.ids[i], int(greedy.lengths[i]))}, "
              f"beam {_digits(beam.ids[i], int(beam.lengths[i]))}")
    return history


def _univae_digits(latent: str, steps: int) -> Tuple[object, List[Dict[str, float]]]:
    from kexue.models.vae.univae import UniVAE

    torch.manual_seed(0)
    model = UniVAE(DIGITS, dim=64, heads=4, layers=3, latent_dims=(16, 16), latent=latent, kappa=64.0,
                   max_length=UNIVAE_LENGTH)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    history = _fit(model, lambda: torch.randint(0, DIGITS, (BATCH_SIZE, UNIVAE_LENGTH), generator=g), steps)
    ids = torch.randint(0, DIGITS, (N_TEST, UNIVAE_LENGTH), generator=torch.Generator().manual_seed(1))
    rec = model.reconstruct(ids)
    accuracy = (rec.ids == ids).float().mean().item()
    print(f"UniVAE, {latent} latents (16+16 dims), random {UNIVAE_LENGTH}-digit strings, {steps} steps, "
          f"{time.perf_counter() - t0:.0f} s: recon {history[0]['recon']:.2f} -> {history[-1]['recon']:.2f} nats, "
          f"KL {history[-1]['kl']:.3f} nats; held-out reconstruction: {accuracy:.3f} of digits right "
          f"(chance {1 / DIGITS:.2f}), {(rec.ids == ids).all(1).float().mean():.3f} of strings")
    return model, history


def _scales(model) -> None:
    """Decode the lower latent of string A with the upper latent of string B."""
    ids = torch.randint(0, DIGITS, (N_TEST, UNIVAE_LENGTH), generator=torch.Generator().manual_seed(2))
    low, high = model.encode(ids)
    other = ids.roll(1, dims=0)
    mixed = model.decode([low, high.roll(1, dims=0)], UNIVAE_LENGTH).ids
    print(f"  lower latent of A + upper latent of B: decoded digits agree with A {(mixed == ids).float().mean():.3f}, "
          f"with B {(mixed == other).float().mean():.3f}")
    samples = model.sample(4, generator=torch.Generator().manual_seed(0))
    print("  samples: " + ", ".join(_digits(s, int((s >= 0).sum())) for s in samples))


def _univae_poems(path: str, steps: int) -> None:
    from kexue.data import get_dataset
    from kexue.models.vae.univae import UniVAE

    data = get_dataset(path, "train")
    test = get_dataset(path, "test")
    torch.manual_seed(0)
    model = UniVAE(len(data.vocab), dim=64, heads=4, layers=3, latent_dims=(16, 16), kappa=64.0,
                   max_length=data.event_shape[0])
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    history = _fit(model, lambda: data.x[torch.randint(0, len(data.x), (32,), generator=g)], steps)
    print(f"UniVAE on {Path(path).name} ({len(data.x)} poems, vocabulary {len(data.vocab)}), {steps} steps, "
          f"{time.perf_counter() - t0:.0f} s: {history[0]['bits_per_token']:.2f} -> "
          f"{history[-1]['bits_per_token']:.2f} bits/token")
    rec = model.reconstruct(test.x[:2])
    for i in range(2):
        print(f"    {data.vocab.decode(test.x[i])} -> {_text(data.vocab, rec.ids[i])}")
    for s in model.sample(3, generator=torch.Generator().manual_seed(0), greedy=False):
        print(f"    sample: {_text(data.vocab, s)}")


def _text(vocab, ids: torch.Tensor) -> str:
    return vocab.decode(ids[ids >= 0])


def _curves(unilm, vmf, gaussian, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot([h["loss"] for h in unilm])
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy per target token (nats)")
    ax.set_title("UniLM: reversing digit strings")
    ax = fig.add_subplot(1, 2, 2)
    for name, hist in (("vMF", vmf), ("Gaussian", gaussian)):
        line, = ax.plot([h["recon"] for h in hist], label=f"{name}: reconstruction")
        ax.plot([h["kl"] for h in hist], "--", color=line.get_color(), label=f"{name}: KL")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per string")
    ax.set_title("UniVAE: random digit strings")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def run(out_dir: Path, scale: float = 1.0) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print("\n== UniLM seq2seq and UniVAE (one Transformer, custom masks) ==")
    unilm = _unilm(max(1, int(UNILM_STEPS * scale)))
    vmf_model, vmf = _univae_digits("vmf", max(1, int(UNIVAE_STEPS * scale)))
    _scales(vmf_model)
    _, gaussian = _univae_digits("gaussian", max(1, int(UNIVAE_STEPS * scale)))
    path = os.environ.get(POEMS_ENV)
    if path:
        _univae_poems(path, max(1, int(POEM_STEPS * scale)))
    else:
        print(f"(set {POEMS_ENV} to a .txt file of equal-length poems to also train UniVAE on poems)")
    fig = out_dir / "unilm_univae.png"
    _curves(unilm, vmf, gaussian, fig)
    print(f"training curves: {fig}")
