"""What a run writes for a person to look at: sample grids, density maps, generated text, and
whatever a model family adds (CapsNet's reconstructions, a confusion matrix).

``make_figures`` runs at every figure step of ``kexue.train.train`` (and at the end), in eval
mode, without gradients and inside ``torch.random.fork_rng`` with fixed seeds, so it never
changes what training does. It never ends a run: a model whose ``sample`` fails gets a warning
and whatever part of the figure can still be drawn.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import torch
from torch import nn

from kexue.data import Dataset
from kexue.train.seeds import derive_seed, fork_devices

# Number of samples drawn for a figure (image grid or 2-D scatter) and lines for samples.txt.
N_IMAGE_SAMPLES = 64
N_POINT_SAMPLES = 1000
N_TEXT_SAMPLES = 32
TEXT_SAMPLES_NAME = "samples.txt"


@dataclass(frozen=True)
class RunView:
    """What a family's ``outputs`` hook sees of the run: where to write, which step, the data,
    the device and a seeded generator on it."""

    out_dir: Path
    step: int
    train_data: Dataset
    test_data: Dataset
    device: torch.device
    generator: torch.Generator


def warn(msg: str) -> None:
    """A RuntimeWarning about a run (a figure that could not be drawn, a resume that will not
    match): the run goes on."""
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def make_figures(model: nn.Module, train_data: Dataset, out_dir: Path, step: int, *, seed: int,
                 device: torch.device, test_data: Optional[Dataset] = None,
                 outputs: Optional[Callable[..., Any]] = None, text: Optional[Callable[..., Any]] = None) -> list:
    """Write this run's outputs for ``step``; returns the paths written.

    - Images (event shape [C, H, W]): a grid of samples, ``samples_step{k}.png`` and a copy as
      ``samples.png``.
    - 2-D vectors: ``density.png``, the model density (when it has ``log_prob``) and samples
      next to the data.
    - ``text(model, dataset, n, generator) -> [str]`` given (text models): ``samples.txt``.
    - ``outputs(model, RunView) -> [paths]`` given: the family's own outputs.
    A model that draws no samples (a classifier) gets only the family's outputs; a model that has
    no ``sample`` and no family outputs gets a warning.
    """
    device = torch.device(device)
    written: List[Path] = []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=fork_devices(device)), torch.no_grad():
            torch.manual_seed(derive_seed("figures", seed))
            gen = torch.Generator(device=device).manual_seed(derive_seed("samples", seed))
            test_data = test_data if test_data is not None else train_data
            if text is not None:
                lines = _guarded(text, "the text samples", model, test_data, N_TEXT_SAMPLES, gen)
                if lines is not None:
                    path = Path(out_dir) / TEXT_SAMPLES_NAME
                    path.write_text("".join(line.replace("\n", " ") + "\n" for line in lines), encoding="utf-8")
                    written.append(path)
            elif callable(getattr(model, "sample", None)) or outputs is None:
                written += _generic_figure(model, train_data, Path(out_dir), step, device, gen)
            if outputs is not None:
                run = RunView(Path(out_dir), step, train_data, test_data, device,
                              torch.Generator(device=device).manual_seed(derive_seed("outputs", seed)))
                written += _guarded(outputs, "the model's own outputs", model, run) or []
    finally:
        model.train(was_training)
    return written


def _guarded(hook: Callable[..., Any], what: str, *args: Any) -> Any:
    """``hook(*args)``, or None with a warning when it raises (disk errors excepted: those are
    the run's to report)."""
    try:
        return hook(*args)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - an output must not end a run
        warn(f"kexue.train: {what} failed ({type(e).__name__}: {e}); skipped")
        return None


def _generic_figure(model: nn.Module, train_data: Dataset, out_dir: Path, step: int, device: torch.device,
                    gen: torch.Generator) -> List[Path]:
    from kexue.train import plots

    shape = tuple(train_data.event_shape)
    written: List[Path] = []
    if len(shape) == 3:
        samples = _try_sample(model, N_IMAGE_SAMPLES, gen, "the sample grid")
        if samples is None:
            return written
        if tuple(samples.shape[1:]) != shape:
            warn(f"kexue.train: model.sample returned shape {list(samples.shape)}, expected "
                  f"[n, {', '.join(map(str, shape))}]; no sample grid drawn")
            return written
        path = out_dir / f"samples_step{step}.png"
        plots.save_sample_grid(samples, path, n_levels=train_data.n_levels, title=f"samples, step {step}")
        latest = out_dir / "samples.png"
        latest.write_bytes(path.read_bytes())
        written += [path, latest]
    elif shape == (2,):
        data = train_data.x
        box = plots.plot_range(data)
        density, notes = None, []
        log_prob = getattr(model, "log_prob", None)  # none is normal (DDPM): the panel shows samples
        if callable(log_prob):
            try:
                density = plots.density_on_grid(log_prob, box, device=device)
            except Exception as e:  # noqa: BLE001 - a figure must not end a run
                warn(f"kexue.train: model.log_prob failed ({type(e).__name__}: {e}); "
                      "density.png has no density map")
                notes.append("log_prob failed")
        samples = _try_sample(model, N_POINT_SAMPLES, gen, "the samples of density.png")
        if samples is None:
            notes.append("no samples")
        elif tuple(samples.shape[1:]) != (2,):
            warn(f"kexue.train: model.sample returned shape {list(samples.shape)}, expected [n, 2]")
            samples = None
        path = out_dir / "density.png"
        plots.save_density_plot(path, data, density=density, box=box, samples=samples,
                                title=f"step {step}", notes=", ".join(notes))
        written.append(path)
    return written


def _try_sample(model: nn.Module, n: int, gen: torch.Generator, what: str) -> Optional[torch.Tensor]:
    sample = getattr(model, "sample", None)
    if not callable(sample):
        warn(f"kexue.train: {type(model).__name__} has no sample(); {what} is skipped")
        return None
    try:
        return sample(n, generator=gen)
    except Exception as e:  # noqa: BLE001 - a figure must not end a run
        warn(f"kexue.train: model.sample failed ({type(e).__name__}: {e}); {what} is skipped")
        return None


__all__ = ["N_IMAGE_SAMPLES", "N_POINT_SAMPLES", "N_TEXT_SAMPLES", "RunView", "TEXT_SAMPLES_NAME", "make_figures",
           "warn"]
