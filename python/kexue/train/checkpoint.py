"""Checkpoints and metric logs that survive a crash at any moment.

``save_checkpoint`` writes the whole file under a temporary name in the target's directory,
flushes it to disk, then ``os.replace``s it over the target: readers (and a resumed run) see
either the old checkpoint or the new one, never a torn file, and a failed write leaves no
temporary file behind. Same-directory matters: ``os.replace`` is atomic only within one file
system.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import torch

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
# Prefix/suffix of the temporary files (dot-prefixed: hidden from a casual ls).
TMP_PREFIX = ".tmp-"
TMP_SUFFIX = ".part"
FILE_MODE = 0o644


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX + path.name + ".", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes files owner-only; a checkpoint is ordinary data
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_checkpoint(path: os.PathLike | str, state: Dict[str, Any]) -> None:
    """``torch.save(state)`` to ``path`` atomically (temporary file + ``os.replace``)."""
    _atomic_write(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: os.PathLike | str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``.

    Checkpoints hold only tensors and plain Python data, so they load with ``weights_only=True``
    (no arbitrary code runs from a checkpoint file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def append_metrics(path: os.PathLike | str, records: Iterable[Dict[str, Any]]) -> None:
    """Append one JSON object per line to ``path``."""
    lines = "".join(json.dumps(r, sort_keys=False) + "\n" for r in records)
    if lines:
        with open(path, "a", encoding="utf-8") as f:
            f.write(lines)


def read_metrics(path: os.PathLike | str) -> List[Dict[str, Any]]:
    """All records of a metrics file (lines that do not parse, e.g. a line torn by a crash,
    are skipped)."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
    except FileNotFoundError:
        pass
    return out


def truncate_metrics(path: os.PathLike | str, max_step: Optional[int]) -> None:
    """Keep only the records with ``step <= max_step`` (all records removed if None).

    A run resumed from the checkpoint of step k redoes every step after k, so records past k
    (logged before the interruption) would otherwise appear twice.
    """
    path = Path(path)
    if max_step is None:
        if path.exists():
            _atomic_write(path, lambda f: None)
        return
    if not path.exists():
        return
    keep = [r for r in read_metrics(path) if isinstance(r.get("step"), int) and r["step"] <= max_step]
    data = "".join(json.dumps(r) + "\n" for r in keep).encode()
    _atomic_write(path, lambda f: f.write(data))


__all__ = ["CHECKPOINT_NAME", "METRICS_NAME", "append_metrics", "load_checkpoint", "read_metrics",
           "save_checkpoint", "truncate_metrics"]
