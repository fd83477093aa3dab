"""Trained runs back in memory: ``load_run`` and ``sample_run`` (behind ``kexue sample``).

A run directory is what ``kexue train`` writes: ``checkpoint.pt`` holds the model's weights and
the run's config (model name, options, data, levels). The model is rebuilt the way training
built it, by its registry entry from the training data (which fixes its shapes and, for text,
its vocabulary), then given the trained weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

from kexue.data import Dataset
from kexue.train import registry
from kexue.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from kexue.train.seeds import derive_seed


@dataclass
class Run:
    """A trained run: ``model`` (in eval mode, on ``device``), the ``config`` it was trained
    with, its training ``data`` (event shape, levels, vocabulary), the registry ``entry`` and
    the ``step`` its checkpoint was written at."""

    model: nn.Module
    config: Dict[str, Any]
    data: Dataset
    entry: registry.ModelEntry
    step: int
    path: Path


def load_run(run_dir: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> Run:
    """The trained model of ``run_dir`` (a ``kexue train`` output directory, or its
    ``checkpoint.pt``), with its config and data description.

    The training data must still be readable under the name or path the run used: it gives
    the model's shapes (and a text model's vocabulary).
    """
    from kexue.train.trainer import check_device, load_data

    path = Path(run_dir)
    ckpt_path = path if path.is_file() else path / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"no run at {path}")
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{path} holds no {CHECKPOINT_NAME}; is it a kexue train output directory?")
    check_device(str(device))
    ckpt = load_checkpoint(ckpt_path)
    config = ckpt.get("config")
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError(f"{ckpt_path} has no run config; it was not written by kexue train")
    name = config["model"]
    if name.startswith("<"):
        raise ValueError(f"{ckpt_path} is a run of a model passed as a module ({name}), not a registered model; "
                         "build the module yourself and load checkpoint['model_state_dict']")
    entry = registry.get(name)
    try:
        train_ds, _, _ = load_data(config["data"], None, config.get("n_levels"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{ckpt_path}: the run's training data {config['data']!r} is needed to rebuild the "
                         f"model and cannot be read ({e})") from e
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed("init", config.get("seed", 0)))
        model = entry.build(train_ds, **config.get("model_options", config.get("model_kwargs", {})))
    model.load_state_dict(ckpt["model_state_dict"])
    model.to(torch.device(device)).eval()
    return Run(model, config, train_ds, entry, int(ckpt.get("step", 0)), path)


def sample_run(run: Run, n: int, out: Union[str, os.PathLike], *, seed: int = 0) -> List[Path]:
    """Draw ``n`` samples of ``run`` and write them: always ``out`` with suffix ``.npy``, plus
    a picture when ``out`` ends in ``.png`` (a grid for images, a scatter over the data for 2-D
    data), plus text lines when the model writes text (``.txt``). Returns the paths written."""
    from kexue.train import plots

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"-n must be a positive integer, got {n!r}")
    out = Path(out)
    if out.suffix not in (".png", ".npy", ".txt"):
        raise ValueError(f"--out {out}: give a file name ending in .png, .npy or .txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    model, data = run.model, run.data
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    gen = torch.Generator(device=device).manual_seed(derive_seed("sample", seed))
    written: List[Path] = []
    with torch.no_grad():
        if run.entry.text is not None:
            lines = [line.replace("\n", " ") for line in run.entry.text(model, data, n, gen)]
            np.save(out.with_suffix(".npy"), np.array(lines, dtype=str))
            written.append(out.with_suffix(".npy"))
            if out.suffix != ".npy":
                out.with_suffix(".txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
                written.append(out.with_suffix(".txt"))
            return written
        if not callable(getattr(model, "sample", None)):
            raise ValueError(f"{run.config['model']} draws no samples (it is a {type(model).__name__}, not a "
                             "generative model)")
        samples = model.sample(n, generator=gen).detach().cpu()
    np.save(out.with_suffix(".npy"), samples.numpy())
    written.append(out.with_suffix(".npy"))
    if out.suffix == ".txt":
        raise ValueError(f"--out {out}: {run.config['model']} does not write text; use .png or .npy")
    if out.suffix == ".png":
        shape = tuple(data.event_shape)
        if len(shape) == 3:
            plots.save_sample_grid(samples, out, n_levels=data.n_levels, title=f"{run.config['model']}, step {run.step}")
        elif shape == (2,):
            plots.save_density_plot(out, data.x, box=plots.plot_range(data.x), samples=samples,
                                    title=f"{run.config['model']}, step {run.step}")
        else:
            raise ValueError(f"--out {out}: data of shape {list(shape)} has no picture; use .npy")
        written.append(out)
    return written


__all__ = ["Run", "load_run", "sample_run"]
