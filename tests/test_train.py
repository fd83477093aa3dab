"""kexue.train: registry, training loop, exact resume, checkpoints, figures, CLI and DDP.

The models here are stand-ins with the interface the real models provide (``loss`` returning a
dict, ``log_prob``, ``sample``): a diagonal Gaussian on plain torch, so these tests exercise the
trainer alone and stay fast.
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import kexue.cli
import kexue.train
from kexue.train import checkpoint as ckpt_mod
from kexue.train import plots, registry
from kexue.train.trainer import BatchStream

TESTS_DIR = Path(__file__).resolve().parent
LOG_2PI = math.log(2 * math.pi)


class DiagGaussian(nn.Module):
    """N(mean, diag(exp(log_std))²) over the event shape; integer data (n_levels) is dequantised
    with noise from the global RNG, as the real image models do. ``actnorm=True`` puts a
    kexue.nn.ActNorm (data-dependent init, an all_reduce under DDP) in front.

    Options:
      init_log_std: initial log standard deviation of every dimension
      init_noise: start the mean from N(0, 1) instead of zeros
      actnorm: put an ActNorm layer in front
    """

    def __init__(self, event_shape, n_levels=None, *, init_log_std=0.0, init_noise=False, actnorm=False):
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.n_levels = n_levels
        self.mean = nn.Parameter(torch.zeros(self.event_shape))
        self.log_std = nn.Parameter(torch.full(self.event_shape, float(init_log_std)))
        if init_noise:
            with torch.no_grad():
                self.mean.normal_()
        self.actnorm = None
        if actnorm:
            from kexue.nn import ActNorm

            self.actnorm = ActNorm(self.event_shape[0])
        self.dim = math.prod(self.event_shape)

    def log_prob(self, x):
        if self.n_levels:
            x = (x.float() + torch.rand(x.shape, device=x.device)) / self.n_levels
            ld = -self.dim * math.log(self.n_levels)
        else:
            ld = 0.0
        if self.actnorm is not None:
            x, ld_a = self.actnorm(x)
            ld = ld + ld_a
        z = (x - self.mean) * torch.exp(-self.log_std)
        return -0.5 * (z.square() + LOG_2PI).flatten(1).sum(1) - self.log_std.sum() + ld

    def loss(self, x):
        nll = -self.log_prob(x).mean()
        return {"loss": nll, "nll": nll.detach(), "bpd": nll.detach() / (self.dim * math.log(2))}

    @torch.no_grad()
    def sample(self, n, temperature=1.0, generator=None):
        z = torch.randn((n, *self.event_shape), generator=generator, device=self.mean.device)
        x = self.mean + torch.exp(self.log_std) * temperature * z
        if self.actnorm is not None:
            x, _ = self.actnorm.inverse(x)
        if self.n_levels:
            x = torch.floor(x.clamp(0, 1 - 1e-6) * self.n_levels)
        return x


class LossOnly(nn.Module):
    """A model with a loss but neither ``sample`` nor ``log_prob``."""

    def __init__(self, event_shape, n_levels=None):
        super().__init__()
        self.inner = DiagGaussian(event_shape, n_levels)

    def loss(self, x):
        return self.inner.loss(x)


def build_loss_only(dataset, **overrides):
    return LossOnly(dataset.event_shape, dataset.n_levels, **overrides)


GAUSSIAN = registry.register_class("test-gaussian", DiagGaussian, default_data="8gaussians",
                                  description="test stand-in: diagonal Gaussian", steps=30, batch_size=32, lr=0.05)
registry.register("test-lossonly", build_loss_only, default_data="8gaussians",
                  description="test stand-in: loss only", replace=True)


def records(out):
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def no_temp_files(out):
    return [p.name for p in Path(out).iterdir() if p.name.startswith(ckpt_mod.TMP_PREFIX)] == []


def params(out):
    return kexue.train.load_checkpoint(Path(out) / "checkpoint.pt")["model_state_dict"]


# ---- registry ----------------------------------------------------------------------------------

def test_registry_get_names_and_errors():
    assert "test-gaussian" in registry.names()
    entry = registry.get("test-gaussian")
    assert entry.default_data == "8gaussians" and entry.builder.model_class is DiagGaussian
    assert [(o.name, o.default, o.type) for o in entry.options] == [
        ("init_log_std", 0.0, "float"), ("init_noise", False, "bool"), ("actnorm", False, "bool")]
    assert entry.options[0].help == "initial log standard deviation of every dimension"
    with pytest.raises(ValueError, match=r"unknown model 'no-such-model'.*test-gaussian"):
        registry.get("no-such-model")
    # same class again: a no-op; another builder under a taken name: an error
    registry.register_class("test-gaussian", DiagGaussian, default_data="8gaussians", description="again")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("test-gaussian", build_loss_only, default_data="8gaussians", description="x")
    registry.MODELS["test-gaussian"] = GAUSSIAN
    # options are checked when the model is built
    with pytest.raises(ValueError, match=r"no option 'init_log_sd'; did you mean 'init_log_std'"):
        entry.build(kexue.data.get_dataset("8gaussians", n=10), init_log_sd=1.0)
    with pytest.raises(ValueError, match=r"option actnorm: expected bool"):
        entry.build(kexue.data.get_dataset("8gaussians", n=10), actnorm="yes")
    with pytest.raises(ValueError, match=r"n_levels is taken from the data set.*--levels"):
        entry.build(kexue.data.get_dataset("8gaussians", n=10), n_levels=3)
    # a builder with **overrides registered without options: keys pass through unchecked
    assert registry.get("test-lossonly").open_options


def test_batch_stream_is_a_function_of_seed_rank_step():
    a, b = BatchStream(100, 30, seed=1, rank=0), BatchStream(100, 30, seed=1, rank=0)
    assert a.per_epoch == 3
    steps = [7, 2, 5, 0, 7]  # any order: no hidden state
    assert all(torch.equal(a.indices(k), b.indices(k)) for k in steps)
    epoch = torch.cat([a.indices(k) for k in range(3)])
    assert len(epoch.unique()) == 90  # no repeats within an epoch
    assert not torch.equal(a.indices(0), a.indices(3))  # reshuffled per epoch
    assert not torch.equal(a.indices(0), BatchStream(100, 30, seed=1, rank=1).indices(0))
    with pytest.raises(ValueError, match="larger than the training set"):
        BatchStream(10, 11, seed=0)


# ---- training ----------------------------------------------------------------------------------

def test_train_toy_loss_falls_metrics_checkpoint_density(tmp_path):
    out = tmp_path / "run"
    res = kexue.train.train("test-gaussian", "8gaussians", steps=40, batch_size=64, out_dir=out, lr=0.05,
                            eval_every=20, log_every=5, progress=False, model_kwargs={"init_log_std": -1.0})
    recs = records(out)
    train = [r for r in recs if r["split"] == "train"]
    test = [r for r in recs if r["split"] == "test"]
    assert [r["step"] for r in train] == list(range(5, 41, 5))
    assert [r["step"] for r in test] == [20, 40]
    assert {"loss", "bpd", "nll", "grad_norm"} <= set(train[0]) and {"loss", "bpd", "nll"} <= set(test[0])
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    assert test[-1]["loss"] < test[0]["loss"]
    assert res["step"] == 40
    assert res["test"] == {k: v for k, v in test[-1].items() if k not in ("step", "split")}
    assert res["train"]["loss"] == train[-1]["loss"]
    # checkpoint: complete, and written atomically (no temporary file left behind)
    ck = kexue.train.load_checkpoint(out / "checkpoint.pt")
    assert ck["step"] == 40 and ck["model_name"] == "test-gaussian" and ck["data"] == "8gaussians"
    assert ck["model_kwargs"] == {"init_log_std": -1.0}
    assert ck["config"]["lr"] == 0.05 and ck["config"]["batch_size"] == 64
    assert set(ck["model_state_dict"]) == {"mean", "log_std"}
    assert ck["optimizer_state_dict"]["state"] and ck["rank_states"][0]["rng"]["cpu"].dtype == torch.uint8
    assert no_temp_files(out)
    assert (out / "density.png").stat().st_size > 0
    # a fresh run into a directory that holds a checkpoint is refused
    with pytest.raises(FileExistsError, match="resume"):
        kexue.train.train("test-gaussian", "8gaussians", steps=1, batch_size=8, out_dir=out, progress=False)


def _digits_run(out, steps, **kw):
    return kexue.train.train("test-gaussian", "digits", steps=steps, batch_size=16, out_dir=out, lr=0.05,
                             log_every=2, progress=False, **kw)


def test_resume_continues_exactly(tmp_path, monkeypatch):
    # digits: the model draws dequantisation noise from the global RNG at every step
    straight = tmp_path / "straight"
    _digits_run(straight, 6)
    split = tmp_path / "split"
    _digits_run(split, 3)
    assert kexue.train.load_checkpoint(split / "checkpoint.pt")["step"] == 3
    res = _digits_run(split, 6, resume=True)
    a, b = params(straight), params(split)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    oa = kexue.train.load_checkpoint(straight / "checkpoint.pt")["optimizer_state_dict"]["state"]
    ob = kexue.train.load_checkpoint(split / "checkpoint.pt")["optimizer_state_dict"]["state"]
    assert all(torch.equal(oa[i][s], ob[i][s]) for i in oa for s in oa[i])
    # the metric log continues too (the split run ended at step 3, so its train window restarted
    # there and its step-4 record covers step 4 alone; from then on the logs agree)
    ra, rb = records(straight), records(split)
    assert [(r["step"], r["split"]) for r in ra] == [(2, "train"), (4, "train"), (6, "train"), (6, "test")]
    assert [(r["step"], r["split"]) for r in rb] == [(2, "train"), (3, "train"), (3, "test"), (4, "train"),
                                                     (6, "train"), (6, "test")]
    assert ra[0] == rb[0] and ra[2:] == rb[4:]
    assert res["test"] == {k: v for k, v in ra[-1].items() if k not in ("step", "split")}
    # ... and the image figures exist
    assert (split / "samples.png").is_file() and (split / "samples_step6.png").is_file()
    assert no_temp_files(split)

    # a crash after the step-3 checkpoint: the records logged past it are dropped on resume
    crashed = tmp_path / "crashed"
    calls = {"n": 0}
    real_loss = DiagGaussian.loss

    def failing_loss(self, x):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 5:
                raise RuntimeError("simulated crash")
        return real_loss(self, x)

    monkeypatch.setattr(DiagGaussian, "loss", failing_loss)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _digits_run(crashed, 6, checkpoint_every=3)
    monkeypatch.setattr(DiagGaussian, "loss", real_loss)
    assert max(r["step"] for r in records(crashed)) == 4
    _digits_run(crashed, 6, resume=True)
    c = params(crashed)
    assert all(torch.equal(a[k], c[k]) for k in a)
    # the restored train window (step 3) makes even the step-4 record match the straight run
    assert records(crashed) == ra
    # resuming a finished run trains nothing and reports the final metrics
    again = _digits_run(crashed, 6, resume=True)
    assert again["step"] == 6 and again["test"] == res["test"] and again["train"] == res["train"]


def test_atomic_checkpoint_write_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt_mod.save_checkpoint(path, {"step": 1, "w": torch.arange(3)})

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt_mod.save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert ckpt_mod.load_checkpoint(path)["step"] == 1
    assert no_temp_files(tmp_path)


def test_figures_without_sample_warn_and_without_log_prob_do_not(tmp_path):
    out = tmp_path / "toy"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kexue.train.train("test-lossonly", "8gaussians", steps=2, batch_size=8, out_dir=out, progress=False)
    messages = " | ".join(str(w.message) for w in caught if w.category is RuntimeWarning)
    # no log_prob is normal (DDPM has none): the figure says so; no sample() is worth a warning
    assert "log_prob" not in messages and "LossOnly has no sample()" in messages
    assert (out / "density.png").is_file()  # the data panel is still drawn
    out = tmp_path / "img"
    with pytest.warns(RuntimeWarning, match="no sample"):
        kexue.train.train("test-lossonly", "digits", steps=2, batch_size=8, out_dir=out, progress=False)
    assert not (out / "samples.png").exists() and (out / "checkpoint.pt").is_file()


def test_sample_display_range():
    levels = torch.tensor([[[[0.0, 8.0], [16.0, 4.0]]]])
    assert torch.allclose(plots.to_unit_range(levels, 17), levels / 16)
    assert plots.to_unit_range(levels.long(), 17).max() == 1
    unit = torch.tensor([[[[-0.5, 0.25], [1.5, float("nan")]]]])
    assert plots.to_unit_range(unit, None).flatten().tolist() == [0.0, 0.25, 1.0, 0.0]
    assert plots.image_grid(torch.rand(5, 3, 4, 4)).shape == (1 + 2 * 5, 1 + 3 * 5, 3)


def test_unknown_model_and_data_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown model 'nope'; registered models: .*test-gaussian"):
        kexue.train.train("nope", "8gaussians", steps=1, batch_size=4, out_dir=tmp_path / "a")
    with pytest.raises(ValueError, match=r"unknown data set 'no-such-data'.*8gaussians"):
        kexue.train.train("test-gaussian", "no-such-data", steps=1, batch_size=4, out_dir=tmp_path / "b")
    assert kexue.cli.main(["train", "nope", "--steps", "1", "--out", str(tmp_path / "c")]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert kexue.cli.main(["train", "test-gaussian", "--data", "x.txt", "--steps", "1",
                           "--out", str(tmp_path / "d")]) == 2
    assert "unknown data set 'x.txt'" in capsys.readouterr().err


# ---- command line ------------------------------------------------------------------------------

def test_cli_parse_values():
    assert kexue.cli.parse_sets(["a=3", "b=0.5", "c=true", "d=No", "e=none", "f=logistic", "g=[1, 2]", "h=1e-3"]) == {
        "a": 3, "b": 0.5, "c": True, "d": False, "e": None, "f": "logistic", "g": [1, 2], "h": 1e-3}
    with pytest.raises(kexue.cli.CommandError, match="key=value"):
        kexue.cli.parse_sets(["novalue"])
    # with a model: by the declared type
    assert kexue.cli.parse_sets(["init_log_std=1", "actnorm=on"], GAUSSIAN) == {"init_log_std": 1.0, "actnorm": True}
    with pytest.raises(kexue.cli.CommandError, match=r"--set init_log_std=big: expected float \(default 0.0\)"):
        kexue.cli.parse_sets(["init_log_std=big"], GAUSSIAN)
    with pytest.raises(kexue.cli.CommandError, match=r"lr is a kexue train flag.*use --lr"):
        kexue.cli.parse_sets(["lr=0.1"], GAUSSIAN)


def test_cli_train_list_and_run(tmp_path, capsys):
    assert kexue.cli.main(["train", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "test-gaussian" in listing and "diagonal Gaussian" in listing
    out = tmp_path / "cli"
    argv = ["train", "test-gaussian", "--data", "8gaussians", "--steps", "4", "--batch-size", "16",
            "--out", str(out), "--lr", "0.01", "--eval-every", "2", "--sample-every", "4",
            "--checkpoint-every", "2", "--seed", "3", "--no-progress", "--set", "init_log_std=0.5"]
    assert kexue.cli.main(argv) == 0
    assert "step 4 test:" in capsys.readouterr().out
    ck = kexue.train.load_checkpoint(out / "checkpoint.pt")
    assert ck["model_kwargs"] == {"init_log_std": 0.5} and ck["step"] == 4
    cfg = ck["config"]
    assert (cfg["lr"], cfg["seed"], cfg["batch_size"], cfg["eval_every"], cfg["checkpoint_every"]) == \
        (0.01, 3, 16, 2, 2)
    assert [r["step"] for r in records(out) if r["split"] == "test"] == [2, 4]
    # --resume to more steps keeps the saved options
    argv = ["train", "test-gaussian", "--steps", "6", "--out", str(out), "--resume", "--no-progress"]
    assert kexue.cli.main(argv) == 0
    ck = kexue.train.load_checkpoint(out / "checkpoint.pt")
    assert ck["step"] == 6 and ck["config"]["seed"] == 3 and ck["model_kwargs"] == {"init_log_std": 0.5}


# ---- distributed data parallel -----------------------------------------------------------------

DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from test_train import DiagGaussian
import kexue.train
rank = int(os.environ["RANK"])
torch.manual_seed(100 + rank)  # the replicas start apart: DDP must broadcast rank 0's weights
model = DiagGaussian((2,), None, init_noise=True, actnorm=True)
res = kexue.train.train(model, "8gaussians", steps=3, batch_size=32, out_dir={out!r}, lr=0.05,
                        progress=False, device="cpu", log_every=1)
torch.save({{k: v.detach().clone() for k, v in model.state_dict().items()}}, os.path.join({out!r}, f"rank{{rank}}.pt"))
print("rank", rank, "test", res["test"])
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_stay_identical(tmp_path):
    out = tmp_path / "ddp"
    script = tmp_path / "ddp_script.py"
    script.write_text(DDP_SCRIPT.format(tests=str(TESTS_DIR), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert set(r0) == {"mean", "log_std", "actnorm.bias", "actnorm.log_scale", "actnorm.initialized"}
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert bool(r0["actnorm.initialized"])
    ck = kexue.train.load_checkpoint(out / "checkpoint.pt")
    assert ck["world_size"] == 2 and ck["step"] == 3
    assert all(torch.equal(ck["model_state_dict"][k], r0[k]) for k in r0)
    # each rank drew its own batches and noise
    s0, s1 = (s["rng"]["cpu"] for s in ck["rank_states"])
    assert not torch.equal(s0, s1)
    # one record per step (rank 0 only writes), test metrics averaged over the ranks
    recs = records(out)
    assert [(r["step"], r["split"]) for r in recs] == [(1, "train"), (2, "train"), (3, "train"), (3, "test")]
