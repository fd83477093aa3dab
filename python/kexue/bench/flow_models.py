"""Training-step benchmarks of whole flow models: kexue's layers (fused ops) against the same
architecture with the ops swapped for their plain-PyTorch references. ``loss_curves`` checks
that both train identically."""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, List

import torch

import kexue.nn.actnorm as _actnorm_mod
import kexue.nn.coupling as _coupling_mod
import kexue.nn.split as _split_mod
from kexue.bench.harness import Case
from kexue.ops import reference_actnorm, reference_coupling
from kexue.train.optim import adam


@contextlib.contextmanager
def reference_ops():
    """Run kexue.nn layers on the plain-PyTorch reference ops instead of the fused kernels:
    the same architecture and parameters, only the arithmetic path differs."""
    saved = (_coupling_mod.coupling, _split_mod.coupling, _actnorm_mod.actnorm)
    _coupling_mod.coupling = _split_mod.coupling = reference_coupling
    _actnorm_mod.actnorm = reference_actnorm
    try:
        yield
    finally:
        _coupling_mod.coupling, _split_mod.coupling, _actnorm_mod.actnorm = saved


def _batches(data: torch.Tensor, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield data[torch.randint(0, data.shape[0], (batch,), generator=g)]


def make_step(model, lr: float = 1e-3, reference: bool = False) -> Callable:
    opt = adam(model.parameters(), lr=lr)
    ctx = reference_ops if reference else contextlib.nullcontext

    def step(x):
        with ctx():
            loss = model.loss(x)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss.detach()

    return step


def loss_curves(build: Callable, data: torch.Tensor, steps: int = 30, batch: int = 64):
    """Train ours and the reference-ops twin from the same initial state on the same batches,
    with the same dequantisation noise; returns both loss lists."""
    torch.manual_seed(0)
    ours = build()
    twin = copy.deepcopy(ours)
    curves = []
    for model, ref in ((ours, False), (twin, True)):
        torch.manual_seed(1)
        step, it = make_step(model, reference=ref), _batches(data, batch)
        curves.append([step(next(it)).item() for _ in range(steps)])
    return curves


def normflows_glow(shape, levels: int, depth: int, hidden: int, n_levels: int):
    """normflows' multi-scale Glow at the same L, K and coupling width, trained on the same
    dequantised digits (its loss converted to bits/dim like ours), or None when normflows is not
    installed (an optional peer: ``pip install normflows``). Differences that remain: its split
    priors are per-channel Gaussians rather than conditioned on the kept half."""
    try:
        import normflows as nf
    except ImportError:
        return None
    c, h, w = shape
    q0, flows, merges = [], [], []
    for i in range(levels):
        blocks = [nf.flows.GlowBlock(c * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True)
                  for _ in range(depth)]
        flows.append(blocks + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        else:
            latent = (c * 2 ** (levels + 1), h // 2 ** levels, w // 2 ** levels)
        q0.append(nf.distributions.GlowBase(latent))
    model = nf.MultiscaleFlow(q0, flows, merges, class_cond=False)
    dim = c * h * w

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def loss(self, x):
            xf = (x.float() + torch.rand_like(x, dtype=torch.float32)) / n_levels
            nll = -self.model.log_prob(xf, None) + dim * math.log(n_levels)
            return {"loss": (nll / (dim * math.log(2))).mean()}

    return Wrapped()


def cases(device: str) -> List[Case]:
    from kexue.data import load_digits, toy_2d
    from kexue.models.flows import Glow, RealNVP

    digits, _ = load_digits("train")
    moons = toy_2d("moons", 20000)
    out = []
    specs = [
        ("glow digits L2 K8 h64", lambda: Glow((1, 8, 8), 17, levels=2, depth=8, hidden=64), digits, 64),
        ("realnvp digits h64", lambda: RealNVP((1, 8, 8), 17, hidden=64), digits, 64),
        ("realnvp moons 8 couplings h64", lambda: RealNVP((2,), hidden=64, n_couplings=8), moons, 512),
    ]
    for name, build, data, batch in specs:
        def make(dev, build=build, data=data, batch=batch):
            torch.manual_seed(0)
            model = build().to(dev)
            x = data[:batch].to(dev)
            model.train()
            model.loss(x)  # data-dependent init outside the timed region
            twin = copy.deepcopy(model)
            return [x, make_step(model), make_step(twin, reference=True)]

        out.append(Case("train-step", name, "step", make, lambda x, ours, ref: ours(x),
                        lambda x, ours, ref: ref(x), compile_reference=False))
    peer = normflows_glow((1, 8, 8), 2, 8, 64, 17)
    if peer is not None:  # ours vs normflows' Glow of the same L, K, width, on the same batch
        def make_peer(dev):
            torch.manual_seed(0)
            model = Glow((1, 8, 8), 17, levels=2, depth=8, hidden=64).to(dev)
            x = digits[:64].to(dev)
            model.train()
            model.loss(x)
            theirs = normflows_glow((1, 8, 8), 2, 8, 64, 17).to(dev)
            theirs.loss(x)  # their ActNorm's data init too
            return [x, make_step(model), make_step(theirs)]

        out.append(Case("train-step", "glow digits L2 K8 h64 vs normflows", "step", make_peer,
                        lambda x, ours, ref: ours(x), lambda x, ours, ref: ref(x), compile_reference=False))
    return out
