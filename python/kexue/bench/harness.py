"""One benchmark harness for every kexue op: ours vs the eager reference vs
torch.compile(reference) in its default mode and with max-autotune (vs a peer library where one is
installed), timed side by side in one run, reported as ratios and as "× best", ours against the
fastest of them; each time is the median of interleaved rounds with its spread beside it. On GPU
also the achieved bandwidth against the measured copy bandwidth."""
from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import json
import os
import platform
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.utils.benchmark as tb


@dataclass
class Case:
    """One benchmark: ``make(device)`` builds the inputs; each variant maps them to outputs.

    For ``mode="fwd+bwd"`` the outputs are back-propagated with fixed random cotangents and
    ``grad_of`` names which inputs (by position) receive gradients.
    """

    op: str
    name: str
    mode: str  # "fwd", "fwd+bwd", or "step" (the variant itself is a whole training step)
    make: Callable[[str], Sequence]
    ours: Callable
    reference: Callable
    grad_of: Sequence[int] = ()
    bytes_moved: Callable[[Sequence], int] = lambda inputs: 0
    flops: Callable[[Sequence], int] = lambda inputs: 0  # useful FLOPs of one call, for TFLOP/s
    peers: Dict[str, Callable] = field(default_factory=dict)
    compile_reference: bool = True  # False where compiling is not the comparison (whole steps)


def _step(fn: Callable, case: Case, inputs: Sequence) -> Callable[[], object]:
    """A zero-argument callable running one timed iteration of ``fn`` on ``inputs``."""
    if case.mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(*inputs)
        return run
    if case.mode == "step":
        return lambda: fn(*inputs)
    wrt = [inputs[i] for i in case.grad_of]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    gen = torch.Generator(device=outs[0].device).manual_seed(0)
    cot = [torch.randn(o.shape, dtype=o.dtype, device=o.device, generator=gen) for o in outs]

    def run():
        o = fn(*inputs)
        o = o if isinstance(o, (tuple, list)) else (o,)
        return torch.autograd.grad(o, wrt, cot)

    return run


# The compiled variants of a reference: label -> torch.compile mode (None: the default).
COMPILE_MODES = {"compiled": None, "compiled-max": "max-autotune-no-cudagraphs"}

_allocator_pinned = False


def pin_allocator() -> bool:
    """Keep freed CPU memory mapped (glibc: mmap'd blocks off, except where a thread's own arena
    cannot hold a block; heap trimming off; both stop the adaptive thresholds). Otherwise a variant whose step frees and re-allocates a few MB
    pays page faults in some rounds and not others (0.99–2.7× for the same case across runs).
    Returns whether the settings took effect; True on every later call. For the whole process and
    not undoable, so benchmark entry points call it, not the harness."""
    global _allocator_pinned
    if _allocator_pinned:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):  # not glibc: nothing to pin
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    # No mmap'd blocks at all (a 94 MB gradient would otherwise be mapped and faulted in afresh
    # every call), and no trimming of the heap top below 2 GiB (the largest int).
    _allocator_pinned = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _allocator_pinned


def time_callable(run: Callable[[], object], device: str, min_time: float = 0.4) -> float:
    """Median seconds per call: CUDA events on GPU, torch.utils.benchmark on CPU."""
    if device.startswith("cuda"):
        for _ in range(5):
            run()
        torch.cuda.synchronize()
        times = []
        while len(times) < 20 or (sum(times) < min_time and len(times) < 2000):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)
    run()
    timer = tb.Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_time).median


def copy_bandwidth(device: str, nbytes: int = 1 << 28) -> float:
    """Measured device-to-device copy bandwidth in GB/s (read + write counted)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    sec = time_callable(lambda: dst.copy_(src), device)
    return 2 * nbytes / sec / 1e9


def machine_info(device: str) -> dict:
    info = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "allocator_pinned": _allocator_pinned,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_cases(cases: List[Case], device: str, *, compile_reference: bool = True,
              compile_modes: Sequence[str] = tuple(COMPILE_MODES), min_time: float = 0.4, rounds: int = 3,
              log: Optional[Callable[[str], None]] = None) -> List[dict]:
    """Time every case's variants and return one result row per case.

    The variants of a case are timed in interleaved rounds (ours, eager, compiled, ours, ...) and
    each reports the median over rounds, so a burst of load on a shared machine hits all of them
    alike instead of skewing one ratio; ``{label}_spread`` is (max − min) / median over the rounds.
    ``compile_modes``: which of COMPILE_MODES to run (when ``compile_reference``).
    """
    results = []
    bw = copy_bandwidth(device) if device.startswith("cuda") else None
    for case in cases:
        inputs = case.make(device)
        variants = {"ours": case.ours, "eager": case.reference}
        if compile_reference and case.compile_reference:
            # Each case compiles afresh: cases built from one factory share one code object, and
            # their recompilations would pile up until dynamo's recompile limit silently ran the
            # "compiled" reference in eager mode.
            torch._dynamo.reset()
            for label in compile_modes:
                variants[label] = torch.compile(case.reference, mode=COMPILE_MODES[label])
        variants.update(case.peers)
        steps, peak_mb = {}, {}
        for label, fn in variants.items():
            if log:
                log(f"  {case.op} {case.name} {case.mode}: preparing {label}")
            steps[label] = _step(fn, case, inputs)  # first call: compiles where it must
        if device.startswith("cuda"):  # peak memory of one call of each variant
            for label, run in steps.items():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                run()
                torch.cuda.synchronize()
                peak_mb[label] = (torch.cuda.max_memory_allocated() - base) / 2**20
        times = {label: [] for label in steps}
        for _ in range(rounds):
            for label, run in steps.items():
                times[label].append(time_callable(run, device, min_time))
        first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        row = {"op": case.op, "case": case.name, "mode": case.mode, "device": device,
               "dtype": str(first.dtype).replace("torch.", "") if first is not None else "float32"}
        for label, ts in times.items():
            row[f"{label}_us"] = statistics.median(ts) * 1e6
            row[f"{label}_spread"] = (max(ts) - min(ts)) / statistics.median(ts)
        for label, mb in peak_mb.items():
            row[f"{label}_peak_MB"] = mb
        for label in times:
            if label != "ours":
                row[f"x_{label}"] = row[f"{label}_us"] / row["ours_us"]
        best = min((label for label in times if label != "ours"), key=lambda label: row[f"{label}_us"])
        row["best"] = best
        row["x_best"] = row[f"x_{best}"]
        moved = case.bytes_moved(inputs)
        if bw and moved:
            row["GBps"] = moved / (row["ours_us"] * 1e-6) / 1e9
            row["copy_GBps"] = bw
            row["pct_copy_bw"] = 100 * row["GBps"] / bw
        flops = case.flops(inputs)
        if flops:
            for label in times:
                row[f"{label}_TFLOPs"] = flops / (row[f"{label}_us"] * 1e-6) / 1e12
        results.append(row)
    return results


def format_table(results: List[dict]) -> str:
    """A Markdown table of the results (ratios > 1 mean kexue is faster; "× best" is ours against
    the fastest alternative, named in "best"; ± is the spread over rounds, in %)."""
    labels = list(dict.fromkeys(k[:-3] for r in results for k in r if k.endswith("_us")))
    others = [label for label in labels if label != "ours"]
    cols = ["op", "case", "mode", "dtype", "ours µs", "± %"] + [f"{p} µs" for p in others]
    cols += [f"× {p}" for p in others] + ["best", "× best", "± best %"]
    has_bw = any("GBps" in r for r in results)
    if has_bw:
        cols += ["GB/s", "% copy BW"]
    has_mem = any("ours_peak_MB" in r for r in results)
    if has_mem:
        cols += ["peak MB ours", "peak MB eager"]
    has_flops = any("ours_TFLOPs" in r for r in results)
    if has_flops:
        cols += ["TFLOP/s ours"] + [f"TFLOP/s {p}" for p in others]

    def fmt(v):
        return "—" if v is None else (f"{v:.2f}" if isinstance(v, float) and v < 10 else f"{v:.0f}" if isinstance(v, float) else str(v))

    def pct(v):
        return None if v is None else f"{100 * v:.0f}"

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        vals = [r["op"], r["case"], r["mode"], r["dtype"], r.get("ours_us"), pct(r.get("ours_spread"))]
        vals += [r.get(f"{p}_us") for p in others]
        vals += [r.get(f"x_{p}") for p in others]
        vals += [r.get("best"), r.get("x_best"), pct(r.get(f"{r.get('best')}_spread"))]
        if has_bw:
            vals += [r.get("GBps"), r.get("pct_copy_bw")]
        if has_mem:
            vals += [r.get("ours_peak_MB"), r.get("eager_peak_MB")]
        if has_flops:
            vals += [r.get("ours_TFLOPs")] + [r.get(f"{p}_TFLOPs") for p in others]
        lines.append("| " + " | ".join(fmt(v) for v in vals) + " |")
    return "\n".join(lines)


def write_json(path: str, results: List[dict], device: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"machine": machine_info(device), "results": results}, f, indent=2)
    os.replace(tmp, path)
