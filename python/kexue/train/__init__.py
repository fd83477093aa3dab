"""Training infrastructure behind ``kexue train``: the model registry, the training loop,
atomic checkpoints and the run's figures.

``kexue.train.registry`` is imported by the model families (to register their models), so this
package must never import ``kexue.models`` at import time; the registry loads the families on
first use instead.
"""
from __future__ import annotations

from kexue.train import registry
from kexue.train.checkpoint import load_checkpoint, read_metrics, save_checkpoint
from kexue.train.registry import MODELS, get, names, register
from kexue.train.outputs import make_figures
from kexue.train.seeds import derive_seed
from kexue.train.trainer import BatchStream, evaluate, train

__all__ = [
    "BatchStream",
    "MODELS",
    "derive_seed",
    "evaluate",
    "get",
    "load_checkpoint",
    "make_figures",
    "names",
    "read_metrics",
    "register",
    "registry",
    "save_checkpoint",
    "train",
]
