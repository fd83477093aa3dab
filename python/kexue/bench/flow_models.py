"""Training-step benchmarks of whole flow models: kexue's layers (fused ops) against the same
architecture with the ops swapped for their plain-PyTorch references. ``loss_curves`` checks
that both train identically."""
from __future__ import annotations

import contextlib
import copy
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
    return out
