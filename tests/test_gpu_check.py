"""tools/gpu_check.py, the GPU machine's prepared command: its dry run (what CI can check without
a GPU), its budget, and the parsers that turn the tools' output into the report."""
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kexue.bench import SUITES

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "gpu_check.py"
GPU_STAGES = ["build", "sass", "pytest-cuda", "sanitizer-memcheck", "sanitizer-racecheck",
              "sanitizer-initcheck", "sanitizer-synccheck"] + [f"bench-{family}" for family in SUITES]


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_dry_run_reports_every_gpu_stage_skipped(tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    res = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
                         capture_output=True, text=True, timeout=60)
    took = time.monotonic() - start
    assert res.returncode == 0, res.stderr
    assert took < 30
    assert (out / "report.md").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["dry_run"] and report["complete"]
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["env"]["status"] == "ok"
    assert set(GPU_STAGES) <= set(stages)
    for name in GPU_STAGES:
        assert (stages[name]["status"], stages[name]["summary"]) == ("skipped", "dry run: no GPU"), name
    assert "| build | skipped |" in res.stdout  # the Markdown report is printed


def test_usage_errors_exit_2(tmp_path):
    for args in (["--only", "nonsense"], ["--budget", "0"], ["--bogus"]):
        res = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path), *args],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, args


def test_bench_stages_follow_the_cli_families(gc):
    assert sorted(family for family, _ in gc.BENCH_FAMILIES) == sorted(SUITES)


def test_only_selects_stages_and_groups_and_keeps_env(gc):
    names = [s.name for s in gc.select(gc.make_stages(), ["sanitizer", "bench-attention"])]
    assert names == ["env", "sanitizer-memcheck", "sanitizer-racecheck", "sanitizer-initcheck",
                     "sanitizer-synccheck", "bench-attention"]


def test_budget_cuts_limits_and_skips_when_exhausted(gc):
    clock = FakeClock()
    budget = gc.Budget(100, clock=clock, reserve_s=5, min_start_s=5)  # stages may run until t = 95
    assert budget.allot(60) == 60
    clock.now += 50
    assert budget.allot(60) == 45
    assert budget.allot(3) == 3  # a stage shorter than the minimum still starts if it fits
    clock.now += 42
    assert budget.allot(60) is None


def _timed_stage(gc, clock, name, limit_s, seconds, seen):
    """A stage that notes the limit it was given and takes ``seconds`` of the fake clock."""
    def run(ctx, log):
        seen[name] = log.limit_s
        clock.now += seconds
        return gc.Outcome("ok", f"{name} done")
    return gc.Stage(name, limit_s, run, needs_gpu=False, needs_build=False)


def test_run_stages_gives_each_stage_what_remains(gc, tmp_path):
    clock, seen = FakeClock(), {}
    budget = gc.Budget(100, clock=clock, reserve_s=5, min_start_s=5)
    stages = [_timed_stage(gc, clock, name, 60, seconds, seen) for name, seconds in (("a", 60), ("b", 33), ("c", 0))]
    ctx = gc.Context(out=tmp_path, python=sys.executable, dry_run=False, cpus=1)
    records = gc.run_stages(stages, ctx, budget)
    assert seen == {"a": 60, "b": 35}  # b is cut to the 35 s left; c, with 2 s left, never starts
    assert [(r["name"], r["status"], r["summary"]) for r in records] == [
        ("a", "ok", "a done"), ("b", "ok", "b done"), ("c", "skipped", "budget")]


def test_a_stage_that_raises_fails_alone_and_a_failed_build_skips_its_dependents(gc, tmp_path):
    def boom(ctx, log):
        raise RuntimeError("kaput")

    def fine(ctx, log):
        return gc.Outcome("ok", "fine")

    stages = [gc.Stage("build", 10, boom, needs_gpu=False, needs_build=False),
              gc.Stage("needs-build", 10, fine, needs_gpu=False),
              gc.Stage("independent", 10, fine, needs_gpu=False, needs_build=False)]
    ctx = gc.Context(out=tmp_path, python=sys.executable, dry_run=False, cpus=1)
    records = gc.run_stages(stages, ctx, gc.Budget(100))
    assert [(r["name"], r["status"]) for r in records] == [
        ("build", "failed"), ("needs-build", "skipped"), ("independent", "ok")]
    assert records[0]["summary"] == "exception RuntimeError: kaput"
    assert "Traceback" in (tmp_path / records[0]["log"]).read_text()
    assert records[1]["summary"] == "needs build (failed)"


def test_a_command_past_its_limit_is_killed_with_its_children(gc, tmp_path):
    log = gc.StageLog(tmp_path / "k.log", 1.0, time.monotonic)
    pidfile = tmp_path / "child.pid"
    res = log.run(["sh", "-c", f"echo started; sleep 30 & echo $! > {pidfile}; sleep 30; echo never"])
    log.close()
    assert res.timed_out and res.seconds < 10
    assert res.output == "started\n"
    stat = Path(f"/proc/{pidfile.read_text().strip()}/stat")

    def state():  # "" once the process is gone (it may vanish between the two reads)
        try:
            return stat.read_text().split(")")[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return ""

    deadline = time.monotonic() + 5  # SIGKILL is delivered at once, but a loaded machine may not
    while state() not in ("", "Z") and time.monotonic() < deadline:  # have run the exit yet
        time.sleep(0.05)
    assert not stat.exists() or state() in ("", "Z")  # gone, or a zombie of init


def test_parsers(gc, tmp_path):
    res_usage = """
Fatbin elf code:
================
arch = sm_90
code version = [1,8]

Resource usage:
 Common:
  GLOBAL:0
 Function _ZN2kx4cuda2tc12_GLOBAL__N_114forward_kernelI13__nv_bfloat16Li64EEEvN4attn4ArgsEPKT_S8_:
  REG:168 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:912 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _ZN2kx4cuda12_GLOBAL__N_112batch_kernelEPf:
  REG:32 STACK:8 SHARED:1024 LOCAL:16 CONSTANT[0]:360 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    rows = gc.parse_res_usage(res_usage)
    assert [(r["arch"], r["REG"], r["STACK"], r["SHARED"], r["LOCAL"]) for r in rows] == [
        ("sm_90", 168, 0, 0, 0), ("sm_90", 32, 8, 1024, 16)]
    assert [bool(gc.ATTENTION_KERNEL.search(r["name"])) for r in rows] == [True, False]
    assert gc.short_signature("kx::cuda::tc::(anonymous namespace)::forward_kernel<float, 64>"
                              "(attn::Args, float const*, void (*)(int))") == "kx::cuda::tc::forward_kernel<float, 64>"

    assert gc.pytest_summary("....\n4 passed, 118 deselected in 12.31s\n") == "4 passed, 118 deselected in 12.31s"
    assert gc.pytest_summary("== 1 failed, 3 passed in 75.10s (0:01:15) ==") == "1 failed, 3 passed in 75.10s (0:01:15)"

    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
                   '<testcase classname="tests.test_a" name="test_ok"/>'
                   '<testcase classname="tests.test_a" name="test_bad[cuda]"><failure message="assert 1 == 2&#10;more"/></testcase>'
                   '<testcase classname="tests.test_a" name="test_skip"><skipped/></testcase>'
                   '<testcase classname="tests.test_a" name="test_ok2"/></testsuite></testsuites>')
    counts, failed = gc.read_junit(xml)
    assert counts == {"tests": 4, "failures": 1, "errors": 0, "skipped": 1, "passed": 2}
    assert failed == ["tests.test_a::test_bad[cuda] — assert 1 == 2"]

    assert gc.error_line("[3/9] nvcc x.cu\nFAILED: x.o\nx.cu(3): error: bad\nerror: subprocess-exited-with-error\n"
                         ) == "x.cu(3): error: bad"
    assert gc.error_line('  raise AssertionError("no")\nAssertionError: no\n') == "AssertionError: no"
    assert gc.bench_summary({"results": [{"x_eager": 2.0, "x_compiled": 1.0}, {"x_eager": 8.0, "ours_TFLOPs": 300.0}]}
                            ) == "2 cases, × eager 4.00, × compiled 1.00, ours up to 300 TFLOP/s (geomean)"
