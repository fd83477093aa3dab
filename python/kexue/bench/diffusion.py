"""Diffusion benchmarks.

Step kernels (``cases``): one DDPM step with in-kernel noise, one DDIM step (η = 0) and q_sample
on a 64 MB float32 tensor [16, 2^20] and on the 2-D sampling batch [10000, 2]; the baseline is
the textbook formula in plain torch (``reference_*``, with ``torch.randn`` for the noise).

Whole sampling loops (``sampling_table``): the 2-D DDPM model (MLP denoiser, 128 wide, 3 blocks)
drawing B = 10,000 samples with 1000 DDPM steps and with 50 DDIM steps: our loop on the fused
steps, the same loop on the reference formulas, and diffusers' DDPMScheduler / DDIMScheduler
when diffusers is installed; on CUDA also our loop captured in one CUDA graph. The denoiser is the
same untrained network for every variant (timing does not depend on the weights)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import torch

from kexue.bench.harness import Case
from kexue.ops import diffusion as D

SHAPES = {"64MB [16, 2^20]": (16, 1 << 20), "2-D batch [10000, 2]": (10000, 2)}


def _inputs(shape):
    def make(device):
        g = torch.Generator().manual_seed(0)
        x, eps = (torch.randn(shape, generator=g).to(device) for _ in range(2))
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        return [x, eps, torch.cumprod(1 - betas, 0).to(device), torch.rand(shape[0], dtype=torch.float64).to(device)]
    return make


def _ref_ddpm(x, eps, ac, ab):
    return D.reference_ddpm_step(x, eps, 500, ac, torch.randn_like(x))


def cases(device: str) -> List[Case]:
    out = []
    for name, shape in SHAPES.items():
        nbytes3 = lambda ins: 3 * ins[0].numel() * ins[0].element_size()  # read x, eps; write out
        out += [
            Case("ddpm_step", name + " t=500, in-kernel noise", "fwd", _inputs(shape),
                 lambda x, eps, ac, ab: D.ddpm_step(x, eps, 500, ac), _ref_ddpm, bytes_moved=nbytes3),
            Case("ddim_step", name + " η=0", "fwd", _inputs(shape),
                 lambda x, eps, ac, ab: D.ddim_step(x, eps, 0.3, 0.5),
                 lambda x, eps, ac, ab: D.reference_ddim_step(x, eps, 0.3, 0.5), bytes_moved=nbytes3),
            Case("q_sample", name + " per-sample ᾱ", "fwd", _inputs(shape),
                 lambda x, eps, ac, ab: D.q_sample(x, eps, ab),
                 lambda x, eps, ac, ab: D.reference_q_sample(x, eps, ab), bytes_moved=nbytes3),
        ]
    return out


# ---------------------------------------------------------------------------------------------
# Whole sampling loops.

def _model(device):
    from kexue.models.diffusion import DDPM, MLPDenoiser

    torch.manual_seed(0)
    return DDPM(MLPDenoiser(2, hidden=128, blocks=3), (2,)).to(device).eval()


def _diffusers_loop(model, kind: str, steps: int, device):
    try:
        from diffusers import DDIMScheduler, DDPMScheduler
    except ImportError:
        return None
    common = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  clip_sample=False)
    if kind == "ddpm":
        sched = DDPMScheduler(variance_type="fixed_large", **common)
    else:
        sched = DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True, **common)
    sched.set_timesteps(steps, device=device)

    def run(x, gen):
        for t in sched.timesteps:
            eps = model.denoiser(x, t)
            x = sched.step(eps, t, x, generator=gen).prev_sample if kind == "ddpm" else sched.step(eps, t, x, eta=0.0).prev_sample
        return x

    return run


def _time(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def sampling_table(device: str = "cpu", n: int = 10000, rounds: int = 3, ddpm_rounds: int = 1) -> List[Dict]:
    """Seconds per full sampling run (median over interleaved rounds) and the ratios to ours."""
    model = _model(device)
    gen = lambda: torch.Generator(device=device).manual_seed(0)
    rows = []
    with torch.no_grad():
        for kind, steps, reps in (("ddpm", 1000, ddpm_rounds), ("ddim", 50, rounds)):
            x_T = torch.randn(n, 2, device=device, generator=gen())
            variants = {
                "kexue": lambda: model.sample(n, sampler=kind, steps=steps, x_T=x_T, generator=gen()),
                "plain torch loop": lambda: model.sample(n, sampler=kind, steps=steps, x_T=x_T, generator=gen(),
                                                         backend="torch"),
            }
            if device.startswith("cuda"):
                variants["kexue + CUDA graph"] = lambda: model.sample(n, sampler=kind, steps=steps, x_T=x_T,
                                                                     generator=None, cuda_graph=True)
            peer = _diffusers_loop(model, kind, steps, device)
            if peer is not None:
                variants["diffusers"] = lambda: peer(x_T.clone(), gen())
            for fn in variants.values():  # warm-up (and graph capture) outside the timing
                fn()
            times: Dict[str, List[float]] = {k: [] for k in variants}
            for _ in range(reps):
                for name, fn in variants.items():
                    times[name].append(_time(fn, device))
            ours = statistics.median(times["kexue"])
            for name, ts in times.items():
                med = statistics.median(ts)
                rows.append({"loop": f"{kind.upper()} {steps} steps, B={n}", "variant": name, "seconds": med,
                             "kexue speed-up": med / ours})
    return rows


def format_sampling(rows: List[Dict]) -> str:
    lines = ["| loop | variant | seconds | kexue is faster by |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['loop']} | {r['variant']} | {r['seconds']:.3f} | {r['kexue speed-up']:.2f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Full sampling loops: kexue vs plain torch vs diffusers")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ddpm-rounds", type=int, default=1)
    a = p.parse_args()
    print(format_sampling(sampling_table(a.device, a.n, a.rounds, a.ddpm_rounds)))
