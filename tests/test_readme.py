"""Every code block and command of README.md, run as written, in document order, in one fresh
directory (so ``runs/glow`` trained by one block is there for the next).

- ```python blocks run each in a fresh namespace (a reader copies one block at a time).
- ```bash blocks run line by line: ``kexue ...`` as ``python -m kexue ...`` (the same entry
  point as the installed script), ``torchrun`` from this Python's environment, and ``make``
  targets as ``make -n`` in the repository (``make demo`` and ``make test`` take minutes).
- The one concession to the test's time: training commands get fewer steps. ``--steps N``
  becomes ``--steps max(2, N·README_STEP_SCALE)``, and a ``kexue train`` without ``--steps``
  gets the model's own default scaled the same way.
- The placeholders the README's commands name as "your data" exist in that directory:
  ``my_images.npy`` (the digits as uint8 levels 0..16, for ``--levels 17``) and ``poems.txt``
  (a few hundred lines of the bundled-style text, equal length).

A line that cannot run as written fails the test with the block and line it came from.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
REPO = README.parent
README_STEP_SCALE = 0.002
MIN_STEPS = 2
COMMAND_TIMEOUT = 300

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def readme_blocks():
    """(language, text, line number) of every fenced block of the README."""
    text = README.read_text(encoding="utf-8")
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in _FENCE.finditer(text)]


def bash_lines(block: str):
    """The commands of a bash block: comments dropped, one command per line."""
    for raw in block.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line:
            yield line


def _scaled(n: int) -> int:
    return max(MIN_STEPS, int(n * README_STEP_SCALE))


def with_fewer_steps(argv):
    """``argv`` of a training command with its step count scaled down (see the module doc)."""
    from kexue.train import registry

    argv = list(argv)
    if "--steps" in argv:
        i = argv.index("--steps")
        argv[i + 1] = str(_scaled(int(argv[i + 1])))
    elif "train" in argv and not {"--list", "--help", "-h"} & set(argv):
        model = argv[argv.index("train") + 1]
        argv += ["--steps", str(_scaled(registry.get(model).steps))]
    return argv


def runnable(line: str):
    """The argv that runs README line ``line``; None for a line the test does not know how to
    run (a failure)."""
    argv = shlex.split(line)
    head = argv[0]
    if head == "kexue":
        return [sys.executable, "-m", "kexue", *with_fewer_steps(argv[1:])], None
    if head == "torchrun":
        torchrun = Path(sys.executable).with_name("torchrun")
        return [str(torchrun), *with_fewer_steps(argv[1:])], None
    if head == "python":
        return [sys.executable, *argv[1:]], None
    if head == "make":
        return ["make", "-n", *argv[1:]], REPO
    return None, None


def make_placeholders(cwd: Path) -> None:
    from kexue.data import load_digits

    images, _ = load_digits("all")
    np.save(cwd / "my_images.npy", images.numpy().astype(np.uint8))
    g = np.random.default_rng(0)
    chars = "春风花月山水云雨夜秋江天人不知何处来去日"
    lines = ["".join(chars[i] for i in g.integers(0, len(chars), 11)) + "。" for _ in range(400)]
    (cwd / "poems.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_readme_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_placeholders(tmp_path)
    env = dict(os.environ, KEXUE_POEMS=str(tmp_path / "poems.txt"), PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    blocks = readme_blocks()
    assert sum(lang == "python" for lang, _, _ in blocks) >= 6 and sum(lang == "bash" for lang, _, _ in blocks) >= 4
    ran = 0
    for lang, text, lineno in blocks:
        where = f"README.md block at line {lineno}"
        if lang == "python":
            code = compile(text, f"<{where}>", "exec")
            try:
                exec(code, {"__name__": "__readme__"})
            except Exception as e:  # noqa: BLE001 - report the block
                pytest.fail(f"{where} failed: {type(e).__name__}: {e}")
            ran += 1
        elif lang == "bash":
            for line in bash_lines(text):
                argv, cwd = runnable(line)
                assert argv is not None, f"{where}: the test cannot run {line!r}"
                proc = subprocess.run(argv, cwd=cwd or tmp_path, env=env, capture_output=True, text=True,
                                      timeout=COMMAND_TIMEOUT)
                assert proc.returncode == 0, f"{where}: {line!r} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
                assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, \
                    f"{where}: {line!r} printed:\n{proc.stderr[-3000:]}"
                ran += 1
        elif lang:
            continue  # e.g. the layout listing (```text would go here)
    assert ran >= 20
    # what the commands promise is there
    for path in ("runs/glow/samples.png", "glow_samples.png", "glow_samples.npy", "runs/moons/density.png",
                 "runs/ddpm/density.png", "ddpm_moons.png", "runs/capsnet/reconstructions.png",
                 "runs/capsnet/overlapping_digits.png", "runs/matrixcaps/confusion.png",
                 "runs/poetry-vae/samples.txt", "poems_generated.txt", "runs/mine/checkpoint.pt"):
        assert (tmp_path / path).is_file(), path
    assert len((tmp_path / "poems_generated.txt").read_text(encoding="utf-8").splitlines()) == 8
