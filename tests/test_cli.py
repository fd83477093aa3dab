"""The ``kexue`` command as a new user meets it: one-line errors with exit status 2, ``--help``
listing each model's options, file-system faults, loading a trained run and sampling from it."""
from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kexue
import kexue.cli
from kexue.train import checkpoint as ckpt_mod
from kexue.train import registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_train  # noqa: E402,F401 - registers the test-gaussian stand-in

FAST = ["--no-progress", "--steps", "3", "--batch-size", "16"]


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of ``kexue argv...`` (argparse exits by SystemExit)."""
    try:
        rc = kexue.cli.main(list(argv))
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---- errors: one line, exit 2, --debug shows the traceback ------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["train", "nope"], r"unknown model 'nope'; registered models: .*glow"),
    (["train", "test-gaussian", "--set", "init_log_sd=1"], r"no option 'init_log_sd'; did you mean 'init_log_std'"),
    (["train", "test-gaussian", "--set", "init_log_std=four"], r"--set init_log_std=four: expected float"),
    (["train", "test-gaussian", "--set", "steps=10"], r"steps is a kexue train flag.*use --steps"),
    (["train", "test-gaussian", "--set", "n_levels=17"], r"n_levels is a kexue train flag.*use --levels"),
    (["train", "glow", "--set", "n_levels=17"], r"n_levels is a kexue train flag.*use --levels"),
    (["train", "test-gaussian", "--set", "novalue"], r"--set expects key=value"),
    (["train", "nvae", "--set", "groups_per_scale=[2, 1.5]"], r"item 1 of \[2, 1.5\] is not int"),
    (["train", "test-gaussian", "--device", "cuda"], r"device 'cuda': (this kexue build has no CUDA|torch sees no CUDA)"),
    (["train", "test-gaussian", "--device", "tpu"], r"device 'tpu'"),
    (["train", "test-gaussian", "--data", "no-such.npy"], r"no such \.npy file"),
    (["train", "test-gaussian", "--data", "moons", "--levels", "17"], r"--levels .*applies to integer \.npy images"),
    (["train", "test-gaussian", "--data", "garbage.npy"], r"garbage\.npy: not a readable \.npy array"),
    (["train", "unilm", "--data", "latin1.txt"], r"latin1\.txt: not valid UTF-8"),
    (["train", "test-gaussian", "--data", "lines.npy"], r"no such \.npy file"),
    (["train", "test-gaussian", "--steps", "many"], r"argument --steps: invalid int value"),
    (["train"], r"name a model"),
    (["bench", "nope"], r"unknown op family 'nope'; choose from coupling"),
    (["sample", "no-such-run"], r"no run at no-such-run"),
    (["frobnicate"], r"invalid choice: 'frobnicate'"),
])
def test_errors_are_one_line_with_status_2(capsys, tmp_path, monkeypatch, argv, expected):
    if "--device" in argv and argv[argv.index("--device") + 1] == "cuda" and torch.cuda.is_available() \
            and kexue.build_info()["cuda"]:
        pytest.skip("CUDA is usable here")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    extra = ["--no-progress"] if argv[0] == "train" and len(argv) > 1 else []
    rc, _, err = run_cli(capsys, *argv, *extra)
    line = one_line_error(err)
    assert rc == 2, (rc, err)
    assert line.startswith("kexue"), line
    assert re.search(expected, line), line
    assert not any(tmp_path.rglob("checkpoint.pt"))


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        kexue.cli.main(["train", "nope", "--debug"])


def test_version_module_entry_and_bench_help(capsys):
    with pytest.raises(SystemExit) as e:
        kexue.cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(f"kexue {kexue.__version__}")
    proc = subprocess.run([sys.executable, "-m", "kexue", "bench", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from kexue.bench import SUITES

    help_text = "".join(proc.stdout.split())  # argparse may wrap "spectral-norm" at its hyphen
    for family in SUITES:
        assert family in help_text, family


def test_train_model_help_lists_every_option(capsys):
    for name in registry.names():
        with pytest.raises(SystemExit) as e:
            kexue.cli.main(["train", name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        entry = registry.get(name)
        assert f"options of {name}" in out and f"--steps {entry.steps}" in out
        for o in entry.options:
            assert f"  {o.name}" in out, (name, o.name)


def test_every_option_of_every_model_is_documented():
    missing = [f"{name}.{o.name}" for name in registry.names() for o in registry.get(name).options
               if not o.help and not name.startswith("test-")]
    assert missing == []


def test_every_public_layer_method_has_a_docstring():
    import inspect

    import kexue.nn as knn

    missing = []
    for name in dir(knn):
        obj = getattr(knn, name)
        if inspect.isclass(obj) and obj.__module__.startswith("kexue"):
            for method in ("forward", "inverse"):
                fn = obj.__dict__.get(method)
                if fn is not None and not (fn.__doc__ or "").strip():
                    missing.append(f"{name}.{method}")
    assert missing == []


# ---- defaults: no flag needed --------------------------------------------------------------------

def test_train_needs_no_flag_and_writes_to_runs_model(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(capsys, "train", "test-gaussian", "--no-progress")
    assert rc == 0, err
    ck = kexue.train.load_checkpoint(tmp_path / "runs" / "test-gaussian" / "checkpoint.pt")
    entry = registry.get("test-gaussian")
    assert (ck["step"], ck["config"]["batch_size"], ck["config"]["lr"]) == (entry.steps, entry.batch_size, entry.lr)
    assert ck["config"]["data"] == entry.default_data
    assert "warning" not in err.lower()


# ---- file-system faults ----------------------------------------------------------------------------

def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(capsys, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "test-gaussian", "--out", str(out), *FAST)[0] == 0
    before = (out / "checkpoint.pt").read_bytes()

    real_fsync = os.fsync

    def full_for_checkpoints(fd):  # the disk fills up exactly when the checkpoint is written
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(ckpt_mod.TMP_PREFIX + "checkpoint.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(ckpt_mod.os, "fsync", full_for_checkpoints)
    rc, _, err = run_cli(capsys, "train", "test-gaussian", "--out", str(out), "--resume", "--no-progress", "--steps", "6")
    line = one_line_error(err)
    assert rc == 1 and "No space left on device" in line and str(out / "checkpoint.pt") in line, line
    assert (out / "checkpoint.pt").read_bytes() == before
    assert max(r["step"] for r in test_train.records(out)) == 6  # it trained; only the save failed
    assert [p.name for p in out.iterdir() if p.name.endswith(ckpt_mod.TMP_SUFFIX)] == []


def test_read_only_output_directory_is_one_line(capsys, tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setattr(Path, "mkdir", denied)
    rc, _, err = run_cli(capsys, "train", "test-gaussian", "--out", str(tmp_path / "ro"), *FAST)
    line = one_line_error(err)
    assert rc == 1 and "Permission denied" in line and "ro" in line, line


@pytest.mark.parametrize("content, expected", [(b"", "is empty"), (b"PK\x03\x04garbage", "not a readable checkpoint"),
                                               (b"\x80\x02}q\x00.", "not a readable checkpoint")])
def test_corrupt_checkpoint_on_resume(capsys, tmp_path, content, expected):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(content)
    rc, _, err = run_cli(capsys, "train", "test-gaussian", "--out", str(out), "--resume", *FAST)
    line = one_line_error(err)
    assert rc == 2 and expected in line and "checkpoint.pt" in line, line


def test_stale_temporary_files_are_removed(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / f"{ckpt_mod.TMP_PREFIX}checkpoint.pt.abc{ckpt_mod.TMP_SUFFIX}"
    stale.write_bytes(b"half a checkpoint")
    old = os.path.getmtime(stale) - 2 * ckpt_mod.STALE_AFTER_SECONDS
    os.utime(stale, (old, old))
    live = out / f"{ckpt_mod.TMP_PREFIX}checkpoint.pt.xyz{ckpt_mod.TMP_SUFFIX}"  # another run writing now
    live.write_bytes(b"being written")
    keep = out / "notes.part"
    keep.write_text("mine")
    assert run_cli(capsys, "train", "test-gaussian", "--out", str(out), *FAST)[0] == 0
    assert not stale.exists() and live.exists() and keep.exists()


# ---- --levels --------------------------------------------------------------------------------------

def test_levels_for_integer_images(tmp_path):
    path = tmp_path / "imgs.npy"
    rng = np.random.default_rng(0)
    np.save(path, rng.integers(0, 17, size=(40, 1, 4, 4)).astype(np.uint8))
    assert kexue.data.get_dataset(str(path)).n_levels == 256
    assert kexue.data.get_dataset(str(path), n_levels=17).n_levels == 17
    with pytest.raises(ValueError, match="--levels 8 is too few: the images hold values up to 16"):
        kexue.data.get_dataset(str(path), n_levels=8)
    out = tmp_path / "run"
    kexue.train.train("test-gaussian", str(path), steps=2, batch_size=8, out_dir=out, progress=False, n_levels=17)
    ck = kexue.train.load_checkpoint(out / "checkpoint.pt")
    assert ck["config"]["n_levels"] == 17
    run = kexue.load_run(out)
    assert run.data.n_levels == 17 and run.model.n_levels == 17


# ---- load_run and kexue sample --------------------------------------------------------------------

def test_load_run_and_sample(capsys, tmp_path):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "test-gaussian", "--out", str(out), "--set", "init_log_std=0.3", *FAST)[0] == 0
    run = kexue.load_run(out)
    assert run.config["model_kwargs"] == {"init_log_std": 0.3} and run.step == 3 and not run.model.training
    saved = kexue.train.load_checkpoint(out / "checkpoint.pt")["model_state_dict"]
    for k, v in run.model.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    rc, stdout, err = run_cli(capsys, "sample", str(out), "-n", "10", "--out", str(tmp_path / "s.png"))
    assert rc == 0, err
    assert (tmp_path / "s.png").stat().st_size > 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (10, 2) and np.isfinite(samples).all()
    # the same seed gives the same samples
    assert run_cli(capsys, "sample", str(out), "-n", "10", "--out", str(tmp_path / "t.npy"))[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), samples)
    rc, _, err = run_cli(capsys, "sample", str(out), "-n", "0")
    assert rc == 2 and "-n must be a positive integer" in one_line_error(err)
    rc, _, err = run_cli(capsys, "sample", str(out), "--out", str(tmp_path / "x.jpg"))
    assert rc == 2 and ".png, .npy or .txt" in one_line_error(err)


# ---- every registered model trains from the command line and writes its outputs ----------------

# What each kind of run must leave beside checkpoint.pt, config.json and metrics.jsonl.
EXPECTED_OUTPUTS = {"infomax": {"neighbours.png", "knn.json"}, "capsnet": {"reconstructions.png", "overlapping_digits.png", "overlapping_digits.json"},
                    "matrixcaps": {"confusion.png", "confusion.json"},
                    "poetry-vae": {"samples.txt"}, "univae": {"samples.txt"}, "unilm": {"samples.txt"}}


def _lines_file(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    chars = "春风花月山水云雨夜秋，。"
    lines = ["".join(chars[int(i)] for i in torch.randint(0, len(chars), (10,), generator=g)) for _ in range(120)]
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("name", [n for n in registry.names() if not n.startswith("test-")])
def test_every_model_trains_by_name_without_warnings(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KEXUE_POEMS", str(_lines_file(tmp_path)))
    monkeypatch.chdir(tmp_path)
    entry = registry.get(name)
    extra = {"ddpm": ["--set", "T=100"], "nvae": ["--set", "channels=8"], "unilm": ["--set", "dim=32"],
             "univae": ["--set", "dim=32"]}.get(name, [])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rc, out, err = run_cli(capsys, "train", name, "--steps", "2", "--batch-size", "8", "--no-progress", *extra)
    assert rc == 0, err
    assert "warning" not in err.lower(), err
    run_dir = tmp_path / "runs" / name
    names = {p.name for p in run_dir.iterdir()}
    assert {"checkpoint.pt", "config.json", "metrics.jsonl"} <= names
    shape = tuple(kexue.load_run(run_dir).data.event_shape)
    expected = EXPECTED_OUTPUTS.get(name, {"samples.png"} if len(shape) == 3 else {"density.png"} if shape == (2,) else set())
    assert expected <= names, (name, names)
    assert entry.default_data


def test_resume_with_another_lr_warns_and_levels_must_match(capsys, tmp_path):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "test-gaussian", "--out", str(out), *FAST)[0] == 0
    with pytest.warns(RuntimeWarning, match=r"resuming with a different lr \(0.05 -> 0.01\)"):
        rc, _, err = run_cli(capsys, "train", "test-gaussian", "--out", str(out), "--resume", "--lr", "0.01",
                             "--steps", "4", "--no-progress")
    assert rc == 0, err


def test_sample_from_a_checkpoint_file_and_help_after_flags(capsys, tmp_path):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "test-gaussian", "--out", str(out), *FAST)[0] == 0
    rc, stdout, err = run_cli(capsys, "sample", str(out / "checkpoint.pt"), "-n", "5")
    assert rc == 0, err
    assert np.load(out / "generated.npy").shape == (5, 2) and (out / "generated.png").is_file()
    rc, stdout, _ = run_cli(capsys, "train", "--data", "digits", "glow", "--help")
    assert rc == 0 and "options of glow" in stdout
