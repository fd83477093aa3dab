"""The models ``kexue train`` knows by name.

A model family registers its models when it is imported::

    from kexue.train.registry import register
    register("glow", build_glow, default_data="digits", description="Glow: ActNorm, 1x1 conv, ...")

where ``build_glow(dataset, **overrides)`` returns the model for a ``kexue.data.Dataset`` (its
event shape and ``n_levels`` usually decide the architecture) with keyword overrides from
``kexue train --set key=value``.

Nothing here imports ``kexue.models`` at import time (the families import this module, so that
would be a cycle). ``get`` and ``names`` import the families on first use instead, which
registers everything they define.
"""
from __future__ import annotations

import importlib
import pkgutil
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

# The model families of DESIGN.md. The registry imports each one that exists (plus any other
# package found under kexue.models), so a family need not be imported by kexue/models/__init__.
FAMILIES = ("flows", "vae", "capsules", "diffusion", "gan", "infomax", "text", "analysis")


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: ``builder(dataset, **overrides) -> nn.Module``."""

    name: str
    builder: Callable[..., Any]
    default_data: str
    description: str

    def build(self, dataset, **overrides):
        return self.builder(dataset, **overrides)


MODELS: Dict[str, ModelEntry] = {}

_families_loaded = False


def register(name: str, builder: Callable[..., Any], *, default_data: str, description: str,
             replace: bool = False) -> ModelEntry:
    """Register ``builder`` under ``name``; returns the entry.

    Registering a name again with the same builder is a no-op (a module imported twice); with a
    different builder it is an error unless ``replace=True``, so two families cannot silently
    claim one name.
    """
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"register: the model name must be a non-empty string without spaces, got {name!r}")
    if not callable(builder):
        raise TypeError(f"register({name!r}): builder must be callable, got {type(builder).__name__}")
    old = MODELS.get(name)
    if old is not None and old.builder is not builder and not replace:
        raise ValueError(f"register: a model named {name!r} is already registered "
                         f"({old.description!r}); pass replace=True to replace it")
    entry = ModelEntry(name, builder, default_data, description)
    MODELS[name] = entry
    return entry


def _load_families() -> None:
    """Import kexue.models and each of its families once, so that they register their models.

    A family that fails to import is reported with a warning and skipped: one broken family must
    not make every other model untrainable.
    """
    global _families_loaded
    if _families_loaded:
        return
    _families_loaded = True
    try:
        models = importlib.import_module("kexue.models")
    except ModuleNotFoundError as e:
        if e.name in ("kexue.models",):
            return  # no model families installed (yet): only explicitly registered models exist
        raise
    found = {m.name for m in pkgutil.iter_modules(getattr(models, "__path__", []))}
    for family in list(FAMILIES) + sorted(found - set(FAMILIES)):
        module = f"kexue.models.{family}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module and family not in found:
                continue  # this family does not exist in this version
            warnings.warn(f"kexue.train.registry: importing {module} failed ({type(e).__name__}: {e}); "
                          "its models are unavailable", RuntimeWarning, stacklevel=3)
        except Exception as e:  # noqa: BLE001 - report and keep the other families usable
            warnings.warn(f"kexue.train.registry: importing {module} failed ({type(e).__name__}: {e}); "
                          "its models are unavailable", RuntimeWarning, stacklevel=3)


def names() -> List[str]:
    """Sorted names of all registered models (importing the model families first)."""
    _load_families()
    return sorted(MODELS)


def get(name: str) -> ModelEntry:
    """The entry registered under ``name``; a ValueError listing the valid names otherwise."""
    _load_families()
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS)) or "(none registered)"
        raise ValueError(f"unknown model {name!r}; registered models: {known}") from None


__all__ = ["FAMILIES", "MODELS", "ModelEntry", "get", "names", "register"]
