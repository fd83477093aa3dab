"""The models ``kexue train`` knows by name.

A model family registers its models when it is imported::

    from kexue.train.registry import register_class
    register_class("glow", Glow, default_data="digits", description="Glow: ActNorm, 1x1 conv, ...",
                   steps=3000, batch_size=64)

builds ``Glow(dataset.event_shape, dataset.n_levels, **overrides)`` for a ``kexue.data.Dataset``
with keyword overrides from ``kexue train --set key=value``. A model whose builder does more
(reads a vocabulary, picks a denoiser by event shape) registers the builder with ``register``
and names where its options are declared (``options=options_of(...)``).

Each entry carries its options (``kexue.train.options``: read from the signature and the
docstring, so they cannot drift) and the training defaults (steps, batch size, learning rate)
with which ``kexue train MODEL --data D`` reaches a recognisable result.

Nothing here imports ``kexue.models`` at import time (the families import this module, so that
would be a cycle). ``get`` and ``names`` import the families on first use instead, which
registers everything they define.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from kexue.train.options import Option, options_of

# The model families of DESIGN.md. The registry imports each one that exists (plus any other
# package found under kexue.models), so a family need not be imported by kexue/models/__init__.
FAMILIES = ("flows", "vae", "capsules", "diffusion", "gan", "infomax", "text", "analysis")


# Training defaults of a model that registers none.
DEFAULT_STEPS = 2000
DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = 1e-3
# The parameters that the data set fills in register_class's builders.
IMAGE_DATA_PARAMS = ("event_shape", "n_levels")


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: ``builder(dataset, **overrides) -> nn.Module``, its options and
    its training defaults."""

    name: str
    builder: Callable[..., Any]
    default_data: str
    description: str
    options: Tuple[Option, ...] = ()
    data_params: Tuple[str, ...] = ()
    steps: int = DEFAULT_STEPS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    # A builder registered without options that takes **overrides: its keys cannot be known
    # here, so they pass unchecked to the builder (which raises on a key it does not take).
    open_options: bool = False
    # outputs(model, run) -> [paths]: what the family writes beside the generic figures at each
    # figure step (``run`` is a kexue.train.outputs.RunView); text(model, dataset, n, generator)
    # -> [str]: n generated lines, for samples.txt and ``kexue sample``.
    outputs: Optional[Callable[..., Any]] = None
    text: Optional[Callable[..., Any]] = None
    # Options this registration sets unlike the model's own defaults (e.g. WGAN-GP's λ).
    presets: Dict[str, Any] = field(default_factory=dict)
    option_index: Dict[str, Option] = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self):
        object.__setattr__(self, "option_index", {o.name: o for o in self.options})

    def check_options(self, overrides: Mapping[str, Any]) -> Dict[str, Any]:
        """``overrides`` with each value checked (and converted) against its option's type; a
        ValueError naming the key and the valid choices for a key the model does not take."""
        out = {}
        for key, value in overrides.items():
            opt = self.option_index.get(key)
            if opt is None:
                if self.open_options and key not in self.data_params:
                    out[key] = value
                    continue
                raise ValueError(self.unknown_option(key))
            out[key] = opt.check(value)
        return out

    def unknown_option(self, key: str) -> str:
        if key in self.data_params:
            hint = " (for integer .npy images, say how many levels with --levels N)" if key == "n_levels" else ""
            return f"{self.name}: {key} is taken from the data set, not set as an option{hint}"
        names = [o.name for o in self.options]
        close = difflib.get_close_matches(key, names, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        return f"{self.name} has no option {key!r}; {guess}its options are: {', '.join(names) or '(none)'}"

    def build(self, dataset, **overrides):
        """The model for ``dataset``: the builder given the presets, then ``overrides``."""
        return self.builder(dataset, **{**self.presets, **self.check_options(overrides)})


MODELS: Dict[str, ModelEntry] = {}

_families_loaded = False


def register(name: str, builder: Callable[..., Any], *, default_data: str, description: str,
             options: Optional[Tuple[Option, ...]] = None, data_params: Tuple[str, ...] = ("dataset",),
             steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR,
             outputs: Optional[Callable[..., Any]] = None, text: Optional[Callable[..., Any]] = None,
             presets: Optional[Mapping[str, Any]] = None, replace: bool = False) -> ModelEntry:
    """Register ``builder`` under ``name``; returns the entry.

    ``options`` (default: read off ``builder``'s own signature) are the ``--set`` keys;
    ``steps``, ``batch_size`` and ``lr`` are the training defaults of ``kexue train``;
    ``outputs`` and ``text`` are the family's own run outputs (see ModelEntry); ``presets``
    are option values this registration uses instead of the builder's defaults.

    Registering a name again with the same builder is a no-op (a module imported twice); with a
    different builder it is an error unless ``replace=True``, so two families cannot silently
    claim one name.
    """
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"register: the model name must be a non-empty string without spaces, got {name!r}")
    if not callable(builder):
        raise TypeError(f"register({name!r}): builder must be callable, got {type(builder).__name__}")
    old = MODELS.get(name)
    if old is not None and not _same_builder(old.builder, builder) and not replace:
        raise ValueError(f"register: a model named {name!r} is already registered "
                         f"({old.description!r}); pass replace=True to replace it")
    open_options = False
    presets = dict(presets or {})
    if options is None:
        options = options_of(builder, data=data_params, defaults=presets)
        open_options = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(builder).parameters.values())
    else:  # show the presets as the defaults
        options = tuple(Option(o.name, presets[o.name], o.type, o.help) if o.name in presets else o for o in options)
    entry = ModelEntry(name, builder, default_data, description, tuple(options), tuple(data_params),
                       steps, batch_size, lr, open_options, outputs, text, presets)
    MODELS[name] = entry
    return entry


def _same_builder(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """The same function, or two class_builders of one class (a module imported twice makes a
    new closure)."""
    cls = getattr(a, "model_class", None)
    return a is b or (cls is not None and cls is getattr(b, "model_class", None))


def class_builder(cls: type) -> Callable[..., Any]:
    """``build(dataset, **options) = cls(dataset.event_shape, dataset.n_levels, **options)``: the
    builder of every model whose architecture follows from its data's shape and number of
    levels."""
    def build(dataset, **options):
        return cls(tuple(dataset.event_shape), dataset.n_levels, **options)

    build.model_class = cls
    build.__qualname__ = f"build_{cls.__name__}"
    build.__doc__ = f"{cls.__name__}(dataset.event_shape, dataset.n_levels, **options)"
    return build


def register_class(name: str, cls: type, *, default_data: str, description: str,
                   defaults: Optional[Mapping[str, Any]] = None, **training: Any) -> ModelEntry:
    """Register ``cls`` built by ``class_builder`` (its options: ``cls``'s keyword parameters,
    with ``defaults`` preset); ``training`` takes ``steps``, ``batch_size``, ``lr``, ``outputs``, ``text``."""
    return register(name, class_builder(cls), default_data=default_data, description=description,
                    options=options_of(cls, data=IMAGE_DATA_PARAMS), data_params=IMAGE_DATA_PARAMS,
                    presets=defaults, **training)


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


__all__ = ["FAMILIES", "MODELS", "ModelEntry", "class_builder", "get", "names", "register", "register_class"]
