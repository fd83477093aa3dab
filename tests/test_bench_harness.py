"""The benchmark harness: every alternative timed in interleaved rounds, "× best" against the
fastest of them, the spread beside each median, and the CPU allocator pinned."""
import subprocess
import sys
import time

import pytest
import torch

from kexue.bench.harness import Case, format_table, run_cases


def _sleeper(seconds):
    def run(x):
        time.sleep(seconds)
        return x * 2
    return run


def test_best_is_the_fastest_alternative_and_spreads_are_reported():
    case = Case("toy", "sleeps", "fwd", lambda device: [torch.ones(4)], ours=_sleeper(0.002),
                reference=_sleeper(0.008), peers={"peer-fast": _sleeper(0.001), "peer-slow": _sleeper(0.02)})
    (row,) = run_cases([case], "cpu", compile_reference=False, min_time=0.02, rounds=3)
    for label in ("ours", "eager", "peer-fast", "peer-slow"):
        assert row[f"{label}_us"] > 0 and row[f"{label}_spread"] >= 0
        if label != "ours":
            assert row[f"x_{label}"] == pytest.approx(row[f"{label}_us"] / row["ours_us"])
    assert row["best"] == "peer-fast"
    assert row["x_best"] == pytest.approx(row["peer-fast_us"] / row["ours_us"]) and row["x_best"] < 1
    table = format_table([row])
    header = table.splitlines()[0]
    assert "× best" in header and "± %" in header and "peer-slow µs" in header and "compiled µs" not in header
    assert "| peer-fast |" in table.splitlines()[2]


def test_compiled_variants_follow_the_requested_modes():
    case = Case("toy", "add", "fwd", lambda device: [torch.ones(8)], ours=lambda x: x + 1, reference=lambda x: x + 1)
    (row,) = run_cases([case], "cpu", compile_modes=("compiled",), min_time=0.01, rounds=1)
    assert "compiled_us" in row and "compiled-max_us" not in row and row["best"] in ("eager", "compiled")


def test_every_case_compiles_its_reference_afresh(monkeypatch):
    # Cases from one factory share the reference's code object; with dynamo's recompile limit at 1
    # only the first would compile unless each case starts from a reset.
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None: real_compile(fn, backend=counter))
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)

    def case(rank):
        return Case("toy", f"rank {rank}", "fwd", lambda device: [torch.ones((2,) * rank)], ours=lambda x: x + 1,
                    reference=lambda x: x * 2 + 1)
    run_cases([case(r) for r in (1, 2, 3)], "cpu", compile_modes=("compiled",), min_time=0.01, rounds=1)
    assert counter.frame_count == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_cpu_allocator_is_pinned_for_benchmarks():
    # In a child process: the setting lasts for the whole process.
    code = ("from kexue.bench.harness import machine_info, pin_allocator; "
            "assert not machine_info('cpu')['allocator_pinned']; "
            "assert pin_allocator() and pin_allocator() and machine_info('cpu')['allocator_pinned']")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
