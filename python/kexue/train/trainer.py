"""``train``: the training loop behind ``kexue train``.

Reproducibility and resuming
----------------------------
Every random choice of step ``k`` (0-based) is a pure function of ``(seed, rank, k)``:

- the batch: each rank shuffles the training set once per epoch with a generator seeded from
  ``(seed, rank, epoch)``; step ``k`` takes slice ``k mod E`` of the permutation of epoch
  ``k // E``, where ``E = len(train) // batch_size`` (the last ``len(train) mod batch_size``
  examples of each permutation are skipped; they differ from epoch to epoch). An epoch's
  permutation is recomputed from its seed, so the batch stream has no state to save.
- the model's own randomness (dequantisation noise, VAE noise, ...), drawn from the global
  torch RNG: the global RNG is re-seeded from ``(seed, rank, k)`` just before step ``k``.

So a run resumed from the checkpoint of step ``k`` (model, optimizer, step) does exactly what the
uninterrupted run did, whatever the evaluation/figure schedule was: evaluation and sampling run
inside ``torch.random.fork_rng`` with their own fixed seeds and never touch the training
streams. The checkpoint also stores every rank's global RNG state (restored on resume, so the
process resumes in the very state it was saved in) and the partial train-metric window, so
the logged metrics continue exactly too. Records of ``metrics.jsonl`` past the checkpoint's
step (logged before an interruption) are dropped on resume, since those steps run again.

Distributed data parallel
-------------------------
Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised ("gloo" on the CPU,
"nccl" with ``device="cuda"``), the model is wrapped in ``DistributedDataParallel`` (which
broadcasts rank 0's parameters and averages gradients), each rank draws its own batches
(seeded with its rank), test metrics are averaged over ranks (each evaluates a shard), and only
rank 0 writes checkpoints, metrics and figures. Layers that initialise themselves from their
first batch (ActNorm) do so inside the first forward, which all ranks run together.
"""
from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn

from kexue.data import Dataset, get_dataset, resolve_data_name
from kexue.train import registry
from kexue.train.optim import adam
from kexue.train.outputs import make_figures, warn as _warn
from kexue.train.seeds import derive_seed, fork_devices
from kexue.train.checkpoint import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    append_metrics,
    load_checkpoint,
    read_metrics,
    remove_stale_temporaries,
    save_checkpoint,
    truncate_metrics,
)

# Defaults of the options that a resumed run otherwise takes from its checkpoint (a registered
# model's own steps, batch size and learning rate come first; see kexue.train.registry).
DEFAULT_LR = registry.DEFAULT_LR
DEFAULT_SEED = 0
DEFAULT_BATCH_SIZE = registry.DEFAULT_BATCH_SIZE
# Where a run goes when no output directory is given: runs/<model name>.
DEFAULT_RUNS_DIR = "runs"
# Gradient clipping threshold: only there to stop a rare blow-up, not to shape training.
DEFAULT_MAX_GRAD_NORM = 100.0
# Toy data sets are drawn with this seed whatever the training seed, so runs with different
# seeds differ in their model randomness only, on the same data.
DATA_SEED = 0
CHECKPOINT_FORMAT = 1
CONFIG_NAME = "config.json"


class BatchStream:
    """The batch indices of each training step: ``indices(k)`` depends only on
    ``(seed, rank, k)`` (per-epoch reshuffling; see the module docstring)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0):
        if batch_size > n:
            raise ValueError(f"batch_size={batch_size} is larger than the training set ({n} examples)")
        self.n, self.batch_size, self.seed, self.rank = n, batch_size, seed, rank
        self.per_epoch = n // batch_size
        self._epoch: Optional[int] = None
        self._perm: Optional[torch.Tensor] = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(derive_seed("batches", self.seed, self.rank, epoch))
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        epoch, j = divmod(step, self.per_epoch)
        return self.permutation(epoch)[j * self.batch_size:(j + 1) * self.batch_size]


class _LossForward(nn.Module):
    """Makes ``model.loss`` the forward of a module, so DistributedDataParallel (which hooks
    ``forward``) sees the training computation."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)


def _as_dict(out: Any) -> Dict[str, Any]:
    if isinstance(out, Mapping):
        if "loss" not in out:
            raise KeyError(f"model.loss(x) must return a dict with key 'loss'; got keys {sorted(out)}")
        return dict(out)
    if isinstance(out, torch.Tensor):
        return {"loss": out}
    raise TypeError(f"model.loss(x) must return a dict (or a scalar tensor), got {type(out).__name__}")


def _scalars(out: Mapping[str, Any]) -> Dict[str, float]:
    """The float-valued entries of a loss/evaluate dict (scalar tensors and numbers)."""
    res = {}
    for k, v in out.items():
        if isinstance(v, torch.Tensor):
            if v.numel() == 1 and not v.dtype.is_complex and v.dtype != torch.bool:
                res[k] = float(v.detach().float().item())
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            res[k] = float(v)
    return res


def _rng_state(device: torch.device) -> Dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _default_device(world_size: int) -> torch.device:
    if world_size == 1 and torch.cuda.is_available():
        import kexue

        if kexue.build_info()["cuda"]:
            return torch.device("cuda")
    return torch.device("cpu")


class _Dist:
    """Rank, world size and the process group's life cycle."""

    def __init__(self, device: Optional[str]):
        self.owns_group = False
        env_world = int(os.environ.get("WORLD_SIZE", "1"))
        if env_world > 1 and dist.is_available() and not dist.is_initialized():
            dev = torch.device(device) if device is not None else torch.device("cpu")
            if dev.type == "cuda":
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            self.owns_group = True
        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1
        if device is not None:
            self.device = torch.device(device)
            if self.device.type == "cuda" and self.device.index is None:
                idx = int(os.environ.get("LOCAL_RANK", "0")) if self.active else torch.cuda.current_device()
                self.device = torch.device("cuda", idx)
        else:
            self.device = _default_device(self.world)

    @classmethod
    def local(cls, device: torch.device) -> "_Dist":
        """A single-process stand-in (no process group)."""
        d = cls.__new__(cls)
        d.owns_group, d.active, d.rank, d.world, d.device = False, False, 0, 1, torch.device(device)
        return d

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            t = t.to(self.device) if dist.get_backend() == "nccl" else t
            dist.all_reduce(t)
            t = t.cpu()
        return t

    def gather(self, obj: Any) -> list:
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self, ok: bool = True) -> None:
        """Destroy the process group if ``train`` created it. After an error no barrier is
        attempted (another rank may never reach it)."""
        if self.owns_group and dist.is_initialized():
            if ok:
                dist.barrier()
            dist.destroy_process_group()


def _reduce_means(sums: Dict[str, float], count: float, d: _Dist) -> Dict[str, float]:
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64)
    t = d.all_sum(t)
    total = t[-1].item()
    return {k: (t[i].item() / total if total else float("nan")) for i, k in enumerate(keys)}


def supervised(model: nn.Module) -> bool:
    """Models that learn from labels (classifiers such as CapsNet) set ``supervised = True``;
    their ``loss`` and ``evaluate`` then take ``(x, labels)`` batches."""
    return bool(getattr(model, "supervised", False))


def eval_batch_sizes(n: int, batch_size: int) -> List[int]:
    """Batch sizes covering ``n`` examples: full batches, with a last batch of a single example
    merged into the one before (models that contrast examples within a batch, e.g. Deep
    InfoMax's negatives, need at least two)."""
    sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    if len(sizes) >= 2 and sizes[-1] == 1:
        sizes[-2:] = [sizes[-2] + 1]
    return sizes


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, batch_size: int, *, seed: int = DEFAULT_SEED,
             device: Union[str, torch.device] = "cpu", _dist: Optional[_Dist] = None,
             labels: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Metrics of ``model`` on all of ``x``, in eval mode without gradients.

    Uses ``model.evaluate(batch)`` when the model has it, else ``model.loss(batch)``; every
    float entry is averaged over the examples (batches weighted by their size). Any randomness
    the model draws comes from a fixed seed, restored afterwards. Under DDP each rank takes the
    examples ``rank::world`` and the averages are over all ranks.
    """
    device = torch.device(device)
    d = _dist or _Dist.local(device)
    own = callable(getattr(model, "evaluate", None))
    fn = model.evaluate if own else model.loss
    was_training = model.training
    model.eval()
    sums: Dict[str, float] = {}
    count = 0
    try:
        with torch.random.fork_rng(devices=fork_devices(device)):
            torch.manual_seed(derive_seed("eval", seed, d.rank))
            part = x[d.rank::d.world]
            sizes = eval_batch_sizes(len(part), batch_size)
            label_parts = labels[d.rank::d.world].split(sizes) if labels is not None else None
            for i, xb in enumerate(part.split(sizes)):
                xb = xb.to(device)
                batch = (xb, label_parts[i].to(device)) if label_parts is not None else xb
                vals = _scalars(fn(batch) if own else _as_dict(fn(batch)))
                for k, v in vals.items():
                    sums[k] = sums.get(k, 0.0) + v * len(xb)
                count += len(xb)
    finally:
        model.train(was_training)
    return _reduce_means(sums, float(count), d)


def _positive(name: str, v: Optional[int]) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {v!r}")


def _resolve(name: str, given: Any, saved: Optional[Mapping[str, Any]], default: Any) -> Any:
    if given is not None:
        return given
    if saved is not None and saved.get(name) is not None:
        return saved[name]
    return default


def train(
    model: Union[str, nn.Module],
    data: Union[str, os.PathLike, Dataset, None] = None,
    *,
    steps: Optional[int] = None,
    batch_size: Optional[int] = None,
    out_dir: Union[str, os.PathLike, None] = None,
    lr: Optional[float] = None,
    eval_every: Optional[int] = None,
    sample_every: Optional[int] = None,
    checkpoint_every: Optional[int] = None,
    resume: bool = False,
    seed: Optional[int] = None,
    progress: bool = True,
    model_kwargs: Optional[Dict[str, Any]] = None,
    max_grad_norm: Optional[float] = None,
    log_every: Optional[int] = None,
    eval_batch_size: Optional[int] = None,
    device: Optional[str] = None,
    test_data: Optional[Dataset] = None,
    n_levels: Optional[int] = None,
) -> Dict[str, Any]:
    """Train ``model`` on ``data`` for ``steps`` optimizer steps in total; returns
    ``{"step": int, "train": {...}, "test": {...}}`` (the last logged train metrics and the final
    test metrics).

    - ``model``: a registered name (``kexue.train.registry``; built by its builder from the
      training set with ``model_kwargs``) or a ready ``nn.Module`` with ``loss(x) -> dict``.
    - ``data``: a toy name, "digits", a ``.npy`` path (``kexue.data.get_dataset``; its "train"
      split trains, its "test" split evaluates), or a ``Dataset`` (evaluated on ``test_data``,
      or on itself when that is None). Default: the registered model's ``default_data``.
    - ``steps``: optimizer steps in total; ``batch_size``: examples per step and process;
      ``lr``: Adam's learning rate. Defaults: the registered model's own (``kexue train --list``
      shows them; 2000, 64 and 1e-3 for a model given as a module, which must be given steps).
    - ``out_dir``: default ``runs/<model name>``.
    - ``n_levels``: the number of levels of integer ``.npy`` images (``kexue.data.get_dataset``).
    - Adam, gradients clipped to ``max_grad_norm``
      (default 100; the pre-clip norm is logged as ``grad_norm``).
    - Every ``log_every`` steps (default: about 1% of the run, at most 100) the mean train
      metrics since the last record go to ``out_dir/metrics.jsonl``; every ``eval_every`` steps
      and at the end, the test metrics (whole test split, batches of ``eval_batch_size``,
      default ``batch_size``); every ``sample_every`` steps and at the end, the figures; every
      ``checkpoint_every`` steps and at the end, ``out_dir/checkpoint.pt`` (atomically).
    - ``resume=True`` continues from ``out_dir/checkpoint.pt`` up to ``steps`` in total, exactly
      as if never interrupted (starts afresh, with a notice, when there is no checkpoint).
      Options left as None (data, batch_size, lr, seed, model_kwargs, the schedules) come from
      the checkpoint. Without ``resume``, an existing checkpoint in ``out_dir`` is an error.
    - ``device``: default cuda when available in a single process, cpu under torchrun.
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    for name, v in (("batch_size", batch_size), ("n_levels", n_levels), ("eval_every", eval_every), ("sample_every", sample_every),
                    ("checkpoint_every", checkpoint_every), ("log_every", log_every),
                    ("eval_batch_size", eval_batch_size)):
        _positive(name, v)
    if out_dir is None:
        if isinstance(model, nn.Module):
            raise ValueError("out_dir is required when the model is given as a module")
        out_dir = Path(DEFAULT_RUNS_DIR) / str(model)
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT_NAME

    check_device(device)
    d = _Dist(device)
    ok = False
    try:
        result = _train(model, data, d, out, ckpt_path, steps=steps, batch_size=batch_size, lr=lr,
                      eval_every=eval_every, sample_every=sample_every, checkpoint_every=checkpoint_every,
                      resume=resume, seed=seed, progress=progress, model_kwargs=model_kwargs,
                      max_grad_norm=max_grad_norm, log_every=log_every, eval_batch_size=eval_batch_size,
                      test_data=test_data, n_levels=n_levels)
        ok = True
        return result
    finally:
        d.close(ok)


def check_device(device: Optional[str]) -> None:
    """A ValueError when ``device`` names CUDA and this process cannot run kexue's CUDA ops."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a device name (cpu, cuda or cuda:N)") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: kexue trains on cpu or cuda")
    if dev.type == "cuda":
        import kexue

        if not kexue.build_info()["cuda"]:
            raise ValueError(f"device {device!r}: this kexue build has no CUDA kernels (a CPU build); "
                             "use --device cpu, or install a CUDA build")
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: torch sees no CUDA device here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA devices")


def load_data(data, test_data=None, n_levels: Optional[int] = None) -> Tuple[Dataset, Dataset, str]:
    """(train set, test set, name) of ``data`` as ``train`` reads it."""
    if isinstance(data, Dataset):
        if n_levels is not None:
            raise ValueError("n_levels is for data given by name or path; this Dataset has its own")
        return data, test_data if test_data is not None else data, data.name
    given = os.fspath(data)  # read as given, so that errors quote the user's own words
    return (get_dataset(given, "train", seed=DATA_SEED, n_levels=n_levels),
            get_dataset(given, "test", seed=DATA_SEED, n_levels=n_levels), resolve_data_name(given))


def _train(model, data, d: _Dist, out: Path, ckpt_path: Path, *, steps, batch_size, lr, eval_every,
           sample_every, checkpoint_every, resume, seed, progress, model_kwargs, max_grad_norm, log_every,
           eval_batch_size, test_data, n_levels) -> Dict[str, Any]:
    main = d.rank == 0
    # ---- the checkpoint to resume from, and the options it implies -------------------------
    ckpt = None
    if ckpt_path.exists():
        if not resume:
            raise FileExistsError(f"{ckpt_path} exists; pass resume=True (--resume) to continue that run, "
                                  "or choose another output directory")
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{ckpt_path}: unsupported checkpoint format {ckpt.get('format')!r}")
    elif resume and main:
        print(f"kexue train: no checkpoint in {out}; starting a new run", file=sys.stderr)
    saved = ckpt["config"] if ckpt is not None else None
    if main:
        remove_stale_temporaries(out)  # left by a process killed while writing a checkpoint

    if isinstance(model, nn.Module):
        model_name, entry = f"<{type(model).__name__}>", None
        if model_kwargs:
            raise ValueError("model_kwargs are for registered model names; this model is already built")
        model_kwargs = {}
    else:
        model_name = str(model)
        entry = registry.get(model_name)
        model_kwargs = dict(_resolve("model_kwargs", model_kwargs, saved, {}))
    if data is None:
        data = _resolve("data", None, saved, entry.default_data if entry is not None else None)
        if data is None:
            raise ValueError("data is required when the model is given as a module")
    steps = _resolve("steps", steps, saved, entry.steps if entry is not None else None)
    if steps is None:
        raise ValueError("steps is required when the model is given as a module")
    batch_size = _resolve("batch_size", batch_size, saved, entry.batch_size if entry is not None else DEFAULT_BATCH_SIZE)
    lr = float(_resolve("lr", lr, saved, entry.lr if entry is not None else DEFAULT_LR))
    n_levels = _resolve("n_levels", n_levels, saved, None)
    seed = int(_resolve("seed", seed, saved, DEFAULT_SEED))
    max_grad_norm = float(_resolve("max_grad_norm", max_grad_norm, saved, DEFAULT_MAX_GRAD_NORM))
    eval_every = _resolve("eval_every", eval_every, saved, None)
    sample_every = _resolve("sample_every", sample_every, saved, None)
    checkpoint_every = _resolve("checkpoint_every", checkpoint_every, saved, None)
    log_every = _resolve("log_every", log_every, saved, max(1, min(100, steps // 100)))
    eval_batch_size = _resolve("eval_batch_size", eval_batch_size, saved, batch_size)
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")

    train_ds, test_ds, data_name = load_data(data, test_data, n_levels)
    config = {
        "model": model_name, "model_kwargs": model_kwargs, "data": data_name, "n_levels": n_levels, "steps": steps,
        # the options the model was built with, registration presets included: what load_run
        # rebuilds, even after a later version changes a preset
        "model_options": {**(entry.presets if entry is not None else {}), **model_kwargs},
        "batch_size": batch_size, "lr": lr, "seed": seed, "max_grad_norm": max_grad_norm,
        "eval_every": eval_every, "sample_every": sample_every, "checkpoint_every": checkpoint_every,
        "log_every": log_every, "eval_batch_size": eval_batch_size, "world_size": d.world,
        "device": str(d.device), "out_dir": str(out), "torch_version": str(torch.__version__),
    }
    if ckpt is not None:
        _check_resume(ckpt, config, entry is not None)

    # ---- model and optimizer ----------------------------------------------------------------
    if entry is not None:
        with torch.random.fork_rng(devices=fork_devices(d.device)):
            torch.manual_seed(derive_seed("init", seed))  # same initial weights on every rank
            core = entry.build(train_ds, **model_kwargs)
        if not isinstance(core, nn.Module):
            raise TypeError(f"the builder of {model_name!r} returned {type(core).__name__}, not an nn.Module")
    else:
        core = model
    if not callable(getattr(core, "loss", None)):
        raise TypeError(f"{type(core).__name__} has no loss(x) method, which training needs")
    core.to(d.device)
    core.train()
    params = [p for p in core.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{model_name} has no trainable parameters")
    # Models may ask for their own Adam momentum (GANs train with β1 = 0.5).
    opt = adam(params, lr=lr, betas=tuple(getattr(core, "adam_betas", (0.9, 0.999))))

    start = 0
    window_sums: Dict[str, float] = {}
    window_count = 0
    if ckpt is not None:
        core.load_state_dict(ckpt["model_state_dict"])
        opt.load_state_dict(ckpt["optimizer_state_dict"])
        for group in opt.param_groups:  # an explicit new lr wins over the saved one
            group["lr"] = lr
        start = int(ckpt["step"])
        if ckpt.get("world_size") == d.world:
            local = ckpt["rank_states"][d.rank]
            _set_rng_state(local["rng"], d.device)
            window_sums, window_count = dict(local["window_sums"]), int(local["window_count"])
    if main:
        out.mkdir(parents=True, exist_ok=True)
        truncate_metrics(out / METRICS_NAME, start if ckpt is not None else None)
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str) + "\n")
    d.barrier()

    if d.active:
        from torch.nn.parallel import DistributedDataParallel

        ids = [d.device.index] if d.device.type == "cuda" else None
        step_fn = DistributedDataParallel(_LossForward(core), device_ids=ids)
    else:
        step_fn = _LossForward(core)

    stream = BatchStream(len(train_ds.x), batch_size, seed, d.rank)
    x_train = train_ds.x.to(d.device)
    with_labels = supervised(core)
    if with_labels and train_ds.labels is None:
        raise ValueError(f"{model_name} learns from labels, but the data set {data_name!r} has none")
    y_train = train_ds.labels.to(d.device) if with_labels else None
    test_labels = test_ds.labels if with_labels else None
    metrics_path = out / METRICS_NAME
    last_train: Dict[str, float] = {}
    last_test: Optional[Dict[str, float]] = None

    bar = _progress_bar(progress and main, steps, start, model_name)
    try:
        for k in range(start, steps):
            done = k + 1
            core.train()
            torch.manual_seed(derive_seed("step", seed, d.rank, k))
            idx = stream.indices(k).to(d.device)
            xb = (x_train[idx], y_train[idx]) if with_labels else x_train[idx]
            outd = _as_dict(step_fn(xb))
            opt.zero_grad(set_to_none=True)
            outd["loss"].backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            vals = _scalars(outd)
            vals["grad_norm"] = float(gnorm)
            if not math.isfinite(vals["grad_norm"]):
                raise FloatingPointError(
                    f"non-finite gradient norm at step {done} (loss {vals.get('loss')}); the last checkpoint "
                    f"is {ckpt_path if ckpt_path.exists() else 'not written yet'}")
            opt.step()
            for key, v in vals.items():
                window_sums[key] = window_sums.get(key, 0.0) + v
            window_count += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix({key: f"{vals[key]:.4g}" for key in ("loss", "bpd") if key in vals}, refresh=False)

            records = []
            if done % log_every == 0 or done == steps:
                last_train = {**_reduce_means(window_sums, float(window_count), d), "lr": lr}
                records.append({"step": done, "split": "train", **last_train})
                window_sums, window_count = {}, 0
            if (eval_every and done % eval_every == 0) or done == steps:
                last_test = evaluate(core, test_ds.x, eval_batch_size, seed=seed, device=d.device, _dist=d,
                                     labels=test_labels)
                records.append({"step": done, "split": "test", **last_test})
                _report(bar, done, last_test)
            if main:
                append_metrics(metrics_path, records)
            if (checkpoint_every and done % checkpoint_every == 0) or done == steps:
                local = {"rng": _rng_state(d.device), "window_sums": window_sums, "window_count": window_count}
                rank_states = d.gather(local)
                if main:
                    save_checkpoint(ckpt_path, {
                        "format": CHECKPOINT_FORMAT, "step": done, "model_name": model_name,
                        "model_kwargs": model_kwargs, "data": data_name, "config": config,
                        "world_size": d.world, "model_state_dict": core.state_dict(),
                        "optimizer_state_dict": opt.state_dict(), "rank_states": rank_states,
                    })
            # after the checkpoint: whatever a figure does, the step's work is saved
            if main and ((sample_every and done % sample_every == 0) or done == steps):
                make_figures(core, train_ds, out, done, seed=seed, device=d.device, test_data=test_ds,
                             outputs=entry.outputs if entry is not None else None,
                             text=entry.text if entry is not None else None)
    finally:
        if bar is not None:
            bar.close()

    if last_test is None:  # nothing left to train: the checkpoint was already at `steps`
        last_test = evaluate(core, test_ds.x, eval_batch_size, seed=seed, device=d.device, _dist=d,
                                     labels=test_labels)
        if main:
            prev = [r for r in read_metrics(metrics_path) if r.get("split") == "train"]
            last_train = {k: v for k, v in (prev[-1] if prev else {}).items() if k not in ("step", "split")}
    return {"step": max(start, steps), "train": last_train, "test": last_test}


def _check_resume(ckpt: Mapping[str, Any], config: Mapping[str, Any], by_name: bool) -> None:
    saved = ckpt["config"]
    if by_name and saved["model"] != config["model"]:
        raise ValueError(f"the checkpoint is of model {saved['model']!r}, not {config['model']!r}")
    # (runs before paths were recorded absolute have them as given)
    if saved["data"] != config["data"] and resolve_data_name(saved["data"]) != config["data"]:
        raise ValueError(f"the checkpoint was trained with data={saved['data']!r}, not {config['data']!r}")
    for key in ("model_kwargs", "n_levels"):
        if saved.get(key) != config[key]:
            raise ValueError(f"the checkpoint was trained with {key}={saved.get(key)!r}, not {config[key]!r}")
    changed = [k for k in ("batch_size", "seed", "lr", "max_grad_norm", "world_size") if saved[k] != config[k]]
    if changed:
        _warn("kexue.train: resuming with a different " + ", ".join(
            f"{k} ({saved[k]!r} -> {config[k]!r})" for k in changed)
            + "; the run will not match an uninterrupted one")


def _progress_bar(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        _warn("kexue.train: tqdm is not installed; no progress bar (pip install tqdm)")
        return None
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True)


def _report(bar, step: int, metrics: Mapping[str, float]) -> None:
    if bar is None:
        return
    text = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    bar.write(f"step {step}: test {text}")


__all__ = ["BatchStream", "derive_seed", "evaluate", "make_figures", "train"]
