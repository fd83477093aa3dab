"""The sampling loops of a trained ε-prediction model (MODELS.md D1-D2):

- ``ddpm``: ancestral sampling, x_{t−1} ~ p(x_{t−1} | x_t) over all T steps (or a respaced chain);
- ``ddim``: DDIM over any number of steps, η = 0 deterministic, η = 1 ancestral;
- ``ode_euler`` / ``ode_heun``: the probability-flow ODE integrated with Euler or Heun's method
  (one model evaluation per step, or two; the last step, to ᾱ = 1, is an Euler step).

Each loop runs with one of two step backends: ``"kexue"`` (the fused ops, noise drawn in the
kernel) or ``"torch"`` (the same loop on the reference formulas and ``torch.randn``, the
benchmark's baseline). On CUDA, ``cuda_graph=True`` captures the whole loop once per setting and
replays it: the step arguments are host numbers baked into each captured launch, and the
in-kernel noise reads its Philox offset from the generator's graph-safe state, so each replay
draws fresh noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from kexue.models.diffusion.schedules import Respaced, Schedule
from kexue.ops import diffusion as ops

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]

SAMPLERS = ("ddpm", "ddim", "ode_euler", "ode_heun")
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "ode_euler": 50, "ode_heun": 25}  # None: all T


@dataclass(frozen=True)
class SamplerConfig:
    sampler: str = "ddpm"
    steps: Optional[int] = None
    eta: float = 0.0
    clip_x0: Optional[float] = None
    variance: str = "beta"
    spacing: str = "trailing"

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if self.sampler.startswith("ode") and self.clip_x0 is not None:
            raise ValueError("clip_x0 is for the ddpm and ddim samplers; the ODE samplers integrate the flow as is")


class _KexueSteps:
    """The fused ops."""

    def __init__(self, generator):
        self.generator = generator

    def ddpm(self, x, eps, k, sched, cfg):
        return ops.ddpm_step(x, eps, k, sched, generator=self.generator, variance=cfg.variance, clip_x0=cfg.clip_x0)

    def ddim(self, x, eps, ab, ab_prev, cfg):
        gen = self.generator if cfg.eta > 0 else None
        return ops.ddim_step(x, eps, ab, ab_prev, eta=cfg.eta, generator=gen, clip_x0=cfg.clip_x0)

    euler = staticmethod(ops.ode_euler_step)
    heun = staticmethod(ops.ode_heun_step)


class _TorchSteps:
    """The reference formulas in plain torch, noise from torch.randn."""

    def __init__(self, generator):
        self.generator = generator

    def _noise(self, x):
        return torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=self.generator)

    def ddpm(self, x, eps, k, sched, cfg):
        return ops.reference_ddpm_step(x, eps, k, sched, self._noise(x), variance=cfg.variance, clip_x0=cfg.clip_x0)

    def ddim(self, x, eps, ab, ab_prev, cfg):
        noise = self._noise(x) if cfg.eta > 0 else None
        return ops.reference_ddim_step(x, eps, ab, ab_prev, eta=cfg.eta, noise=noise, clip_x0=cfg.clip_x0)

    euler = staticmethod(ops.reference_ode_euler_step)
    heun = staticmethod(ops.reference_ode_heun_step)


BACKENDS = {"kexue": _KexueSteps, "torch": _TorchSteps}


class _Plan:
    """Everything a loop needs, built before it runs (nothing is allocated on the device inside
    the loop, so it can be captured): per-step model times and ᾱ values as host numbers."""

    def __init__(self, schedule: Schedule, cfg: SamplerConfig, n: int, device: torch.device):
        steps = cfg.steps if cfg.steps is not None else (schedule.T if cfg.sampler == "ddpm" else DEFAULT_STEPS[cfg.sampler])
        self.respaced: Respaced = schedule.respace(steps, cfg.spacing)
        ts = self.respaced.timesteps
        self.times = [torch.full((n,), t, device=device, dtype=torch.long) for t in ts]
        scalar = lambda v: torch.tensor(v, dtype=torch.float64)
        self.ab = [scalar(v) for v in self.respaced.alpha_bar]
        self.ab_prev = [scalar(v) for v in self.respaced.alpha_bar_prev]
        self.ddpm_index = [torch.tensor(len(ts) - 1 - k, dtype=torch.long) for k in range(len(ts))]
        self.ddpm_schedule = self.respaced.ddpm_schedule().to(device)


def run_loop(model: Denoiser, x: Tensor, plan: _Plan, cfg: SamplerConfig, steps) -> Tensor:
    """The sampler's loop from x = x_T; returns x_0."""
    S = len(plan.times)
    for k in range(S):
        eps = model(x, plan.times[k])
        if cfg.sampler == "ddpm":
            x = steps.ddpm(x, eps, plan.ddpm_index[k], plan.ddpm_schedule, cfg)
        elif cfg.sampler == "ddim":
            x = steps.ddim(x, eps, plan.ab[k], plan.ab_prev[k], cfg)
        elif cfg.sampler == "ode_euler" or k == S - 1:
            x = steps.euler(x, eps, plan.ab[k], plan.ab_prev[k])
        else:  # Heun: the slope at the Euler point, then the mean slope
            x_e = steps.euler(x, eps, plan.ab[k], plan.ab_prev[k])
            x = steps.heun(x, eps, model(x_e, plan.times[k + 1]), plan.ab[k], plan.ab_prev[k])
    return x


class GraphCache:
    """Captured sampling loops, one per (shape, dtype, device, config, backend, generator)."""

    def __init__(self):
        self._graphs: Dict[Tuple, Tuple] = {}

    def clear(self) -> None:
        self._graphs.clear()

    def run(self, key: Tuple, x_T: Tensor, build: Callable[[Tensor], Tensor], generator) -> Tensor:
        entry = self._graphs.get(key)
        if entry is None:
            static_x = x_T.clone()
            side = torch.cuda.Stream(device=x_T.device)
            side.wait_stream(torch.cuda.current_stream(x_T.device))
            with torch.cuda.stream(side):  # warm-up outside the capture (lazy init, autotuning)
                build(static_x)
            torch.cuda.current_stream(x_T.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            if generator is not None and generator is not torch.cuda.default_generators[x_T.device.index or 0]:
                if not hasattr(graph, "register_generator_state"):
                    raise RuntimeError("capturing with a custom CUDA generator needs torch >= 2.5 "
                                       "(CUDAGraph.register_generator_state); pass generator=None")
                graph.register_generator_state(generator)
            with torch.cuda.graph(graph):
                static_out = build(static_x)
            # The graph reads the plan's tensors in place: the entry keeps `build` (and so them) alive.
            entry = (graph, static_x, static_out, build)
            self._graphs[key] = entry
        graph, static_x, static_out, _ = entry
        static_x.copy_(x_T)
        graph.replay()
        return static_out.clone()


def sample_loop(model: Denoiser, x_T: Tensor, schedule: Schedule, cfg: SamplerConfig, *,
                generator: Optional[torch.Generator] = None, backend: str = "kexue",
                cuda_graph: bool = False, graphs: Optional[GraphCache] = None) -> Tensor:
    """Sample x_0 from the noise ``x_T`` with ``cfg``'s sampler (see the module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    steps = BACKENDS[backend](generator)
    plan = _Plan(schedule, cfg, x_T.shape[0], x_T.device)
    build = lambda x: run_loop(model, x, plan, cfg, steps)
    if not cuda_graph:
        return build(x_T)
    if x_T.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs the sample on a CUDA device, got {x_T.device}")
    if graphs is None:
        raise ValueError("cuda_graph=True needs a GraphCache to keep the captured loop in")
    key = (tuple(x_T.shape), x_T.dtype, x_T.device, cfg, backend, id(generator))
    return graphs.run(key, x_T, build, generator)


def sampler_names() -> List[str]:
    return list(SAMPLERS)
