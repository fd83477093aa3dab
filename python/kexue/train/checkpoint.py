"""Checkpoints and metric logs that survive a crash at any moment.

``save_checkpoint`` writes the whole file under a temporary name in the target's directory,
flushes it to disk, then ``os.replace``s it over the target: readers (and a resumed run) see
either the old checkpoint or the new one, never a torn file, and a failed write leaves no
temporary file behind. Same-directory matters: ``os.replace`` is atomic only within one file
system.

The state is serialised in memory first and then written with plain file writes, so a full or
read-only disk surfaces as the ``OSError`` it is (torch's own writer reports it as an opaque
"enforce fail at inline_container.cc" RuntimeError). ``remove_stale_temporaries`` deletes the
temporary files a killed process leaves behind.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import torch

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
# Prefix/suffix of the temporary files (dot-prefixed: hidden from a casual ls).
TMP_PREFIX = ".tmp-"
TMP_SUFFIX = ".part"
FILE_MODE = 0o644
# A temporary file older than this is a leftover of a killed process, not a write in progress.
STALE_AFTER_SECONDS = 60


def _cannot_write(path: Path, e: OSError) -> OSError:
    """``e`` (same errno, so the same OSError subclass) with a message naming ``path``."""
    return OSError(e.errno, f"cannot write {path}: {e.strerror or e}")


def _atomic_write(path: Path, write) -> None:
    """``write(f)`` into a temporary file beside ``path``, then rename it over ``path``; an
    OSError names ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX + path.name + ".", suffix=TMP_SUFFIX)
    except OSError as e:
        raise _cannot_write(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes files owner-only; a checkpoint is ordinary data
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno is not None:
            raise _cannot_write(path, e) from e
        raise


def save_checkpoint(path: os.PathLike | str, state: Dict[str, Any]) -> None:
    """``torch.save(state)`` to ``path`` atomically (temporary file + ``os.replace``); a disk
    error is an ``OSError`` naming ``path``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    _atomic_write(Path(path), lambda f: f.write(data))


def remove_stale_temporaries(directory: os.PathLike | str) -> List[Path]:
    """Delete the temporary files of interrupted atomic writes in ``directory`` (a process killed
    between creating one and renaming it); returns the paths removed. Files younger than
    STALE_AFTER_SECONDS are left alone: they may belong to a run still writing."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    now = time.time()
    for p in directory.iterdir():
        if p.name.startswith(TMP_PREFIX) and p.name.endswith(TMP_SUFFIX) and p.is_file() \
                and now - p.stat().st_mtime > STALE_AFTER_SECONDS:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def load_checkpoint(path: os.PathLike | str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``.

    Checkpoints hold only tensors and plain Python data, so they load with ``weights_only=True``
    (no arbitrary code runs from a checkpoint file).
    A file that is empty, truncated or not a checkpoint is a ValueError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty, not a checkpoint; delete it to start afresh")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable checkpoint ({first}); delete it to start afresh") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a kexue checkpoint (it holds a {type(state).__name__})")
    return state


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
           "remove_stale_temporaries", "save_checkpoint", "truncate_metrics"]
