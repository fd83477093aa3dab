"""kexue: fused CUDA/C++ torch operators and models for classic generative modelling."""
from __future__ import annotations

from kexue._loader import load as _load

_C = _load()

from kexue import ops  # noqa: E402  (registers the fake kernels of the loaded ops)
from kexue import nn  # noqa: E402

__version__ = _C.build_info()["version"]


def build_info() -> dict:
    """How the compiled library was built: version, torch version, CUDA kernels and archs."""
    return dict(_C.build_info())


def load_run(run_dir, device="cpu"):
    """The trained model of a ``kexue train`` output directory, with its config and data
    description (``kexue.train.runs.load_run``)."""
    from kexue.train.runs import load_run as _load_run

    return _load_run(run_dir, device=device)


__all__ = ["ops", "nn", "build_info", "load_run", "__version__"]
