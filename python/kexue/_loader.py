"""Load the compiled library ``kexue._C`` (which registers the ``torch.ops.kexue`` operators),
with errors that say what to do when it is missing or was built against another torch."""
from __future__ import annotations

import importlib

import torch

_BUILD_HELP = (
    "Build it from the source tree with `make test` (sets up .venv and builds), or by hand:\n"
    "    pip install --no-build-isolation -e .\n"
    "(--no-build-isolation matters: kexue must be compiled against the torch that imports it)."
)


def _base_version(v: str) -> str:
    return v.split("+")[0]


def load():
    try:
        lib = importlib.import_module("kexue._C")
    except ImportError as err:  # missing, or unresolved libtorch symbols from a torch mismatch
        msg = str(err)
        if "undefined symbol" in msg or "symbol not found" in msg:
            raise ImportError(
                f"kexue's compiled library does not match the installed torch {torch.__version__} "
                f"({msg}). It was most likely built against another torch version; rebuild it.\n"
                + _BUILD_HELP
            ) from err
        raise ImportError(
            f"kexue's compiled library kexue._C is not available ({msg}).\n" + _BUILD_HELP
        ) from err
    info = lib.build_info()
    built, running = info["torch_version"], _base_version(torch.__version__)
    if built != running:
        raise ImportError(
            f"kexue was built against torch {built} but torch {torch.__version__} is installed; "
            "the operators would crash or misbehave. Rebuild kexue.\n" + _BUILD_HELP
        )
    return lib
