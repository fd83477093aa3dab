#!/usr/bin/env python3
"""The GPU machine's one prepared command, ``make gpu-check OUT=dir``: build kexue for sm_90, run
the CUDA tests, compute-sanitizer over the kernels that most need it, a static resource report of
the attention kernels and the CUDA benchmarks, then write OUT/report.md and OUT/report.json.

The machine is lent for minutes, so every stage has its own time limit, a global budget cuts the
limits of the later stages, and a stage that fails or times out never stops the ones after it (a
failed build skips only the stages that need the built package). ``--dry-run`` walks the same
stages on a machine without a GPU (CI): the GPU stages are reported as skipped.

Standard library only, Python 3.9+.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/sass_tools.py, also when loaded by path
import sass_tools  # noqa: E402
from sass_tools import find_tool, parse_res_usage, short_signature  # noqa: E402,F401

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_S = 570.0
REPORT_RESERVE_S = 5.0  # kept back from the stages so that the report is always written
MIN_START_S = 5.0  # a stage offered less time than this is skipped rather than started to be killed
KILL_GRACE_S = 3.0  # between SIGTERM and SIGKILL of a timed-out command's process group
SUMMARY_CHARS = 200
DRY_RUN_REASON = "dry run: no GPU"
BUDGET_REASON = "budget"
STATUSES = ("ok", "failed", "timeout", "skipped")

PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]
# (tool, pytest selection, limit in s): memcheck over every tensor-core head dim, the tools that
# look at shared memory and barriers over the causal d=64 cases, initcheck over the ops whose
# outputs are written by several kernels.
SANITIZER_RUNS: Tuple[Tuple[str, Sequence[str], float], ...] = (
    ("memcheck", ["-m", "cuda", "tests/test_attention_ops.py", "-k", "tensor_core and (64 or 80)"], 120),
    ("racecheck", ["-m", "cuda", "tests/test_attention_ops.py", "-k", "tensor_core and 64 and causal"], 90),
    ("initcheck", ["-m", "cuda", "tests/test_coupling.py", "tests/test_diffusion_ops.py", "-k", "matches_reference"], 60),
    ("synccheck", ["-m", "cuda", "tests/test_attention_ops.py", "-k", "tensor_core and 64 and causal"], 60),
)
# kexue.bench.SUITES in the order run (the attention kernels matter most, so they go first) with
# their limits in s; tests/test_gpu_check.py keeps this list in step with the CLI's families.
BENCH_FAMILIES: Tuple[Tuple[str, float], ...] = (
    ("attention", 60), ("coupling", 10), ("actnorm", 10), ("flow-models", 15),
    ("spectral-norm", 10), ("iresnet", 15), ("capsules", 15), ("diffusion", 15),
)
# Shorter timing than the CLI's default (0.3 s x 3 rounds), so that a family fits its limit.
BENCH_TIMING = ["--min-time", "0.1", "--rounds", "2"]
# Kernels of the attention ops in mangled names: parameters of type attn::Args/Rope ("4attn") and
# the tensor-core namespace kx::cuda::tc ("2tc"); a bare "tc" would also match "batch", "match".
ATTENTION_KERNEL = re.compile(r"attention|attn|(?<![0-9])2tc(?![a-z_])")

TORCH_PROBE = """
import importlib.util, json, platform
info = {"python": platform.python_version()}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=str(torch.version.cuda),
                cuda_available=torch.cuda.is_available())
except Exception as err:
    info["torch"] = "not importable: %r" % (err,)
mods = ("pytest", "hypothesis", "numpy", "scipy", "scikit_build_core", "pybind11")
info["missing_modules"] = [m for m in mods if importlib.util.find_spec(m) is None]
print(json.dumps(info))
"""
BUILD_INFO_PROBE = "import json, kexue; print(json.dumps(kexue.build_info()))"
EXTENSION_PROBE = "import kexue._C as c; print(c.__file__)"


class Interrupted(BaseException):
    """SIGTERM arrived (the machine's lease ended): kill the running command, write the report."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Outcome:
    status: str
    summary: str
    details: str = ""  # Markdown put in the report under the stage's name


@dataclass
class Context:
    out: Path
    python: str
    dry_run: bool
    cpus: int
    facts: Dict[str, str] = field(default_factory=dict)  # the report's machine header
    records: List[dict] = field(default_factory=list)
    interrupted: Optional[int] = None  # the signal that stopped the run


@dataclass
class Stage:
    name: str
    limit_s: float
    run: Callable[[Context, "StageLog"], Outcome]
    needs_gpu: bool = True  # skipped in a dry run
    needs_build: bool = True  # skipped when this run's build did not succeed


@dataclass
class Result:
    rc: Optional[int]  # None: killed at its time limit
    seconds: float
    output: str

    @property
    def timed_out(self) -> bool:
        return self.rc is None


class Budget:
    """The global deadline: each stage gets its own limit cut to what remains of the budget, or
    nothing when too little remains to be worth starting. The clock is injectable for tests."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic,
                 reserve_s: float = REPORT_RESERVE_S, min_start_s: float = MIN_START_S):
        self.clock = clock
        self.total_s = total_s
        self.start = clock()
        self.deadline = self.start + total_s - reserve_s
        self.min_start_s = min_start_s

    def elapsed(self) -> float:
        return self.clock() - self.start

    def allot(self, limit_s: float) -> Optional[float]:
        """The time a stage with this limit may run now; None when it cannot start."""
        left = self.deadline - self.clock()
        if left < min(limit_s, self.min_start_s):
            return None
        return min(limit_s, left)


class StageLog:
    """A stage's log file and time limit. Commands run through it stream their output into the
    log (never to stdout) and are killed with their whole process group at the stage's limit."""

    def __init__(self, path: Path, limit_s: float, clock: Callable[[], float]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.limit_s = limit_s
        self._clock = clock
        self._deadline = clock() + limit_s
        # Unbuffered and appending: our notes and the children's output interleave in order.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        self._file = os.fdopen(fd, "ab", buffering=0)

    def close(self) -> None:
        self._file.close()

    def remaining(self) -> float:
        return self._deadline - self._clock()

    def note(self, text: str) -> None:
        self._file.write((text.rstrip("\n") + "\n").encode("utf-8", "replace"))

    def run(self, cmd: Sequence[str], limit_s: Optional[float] = None,
            env: Optional[Dict[str, str]] = None) -> Result:
        """Run ``cmd`` in the repository root within min(limit_s, the stage's remaining time)."""
        limit = self.remaining() if limit_s is None else min(limit_s, self.remaining())
        self.note(f"$ {shlex.join(cmd)}")
        if limit <= 0:
            self.note("# not started: the stage's time is used up")
            return Result(None, 0.0, "")
        start = os.fstat(self._file.fileno()).st_size
        t0 = self._clock()
        # Unbuffered children: a killed command still leaves its last output in the log.
        rc = self._spawn_and_wait(cmd, limit, {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        seconds = self._clock() - t0
        with open(self.path, "rb") as f:
            f.seek(start)
            output = f.read().decode("utf-8", "replace")
        self.note(f"# exit {'timeout' if rc is None else rc} after {seconds:.1f} s")
        return Result(rc, seconds, output)

    def _spawn_and_wait(self, cmd: Sequence[str], limit: float, env: Dict[str, str]) -> Optional[int]:
        try:
            proc = subprocess.Popen(list(cmd), cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=self._file,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as err:  # a tool that is not installed: the stage reports it, the run goes on
            self.note(f"# cannot start: {err}")
            return 127
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            return None
        finally:  # after a timeout or an interruption, and the stragglers of a normal exit
            _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the command's process group, then SIGKILL whatever outlives a short grace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group has gone
            return
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            pass


# ---------------------------------------------------------------------------------------------
# Small helpers


def clip(text: str, n: int = SUMMARY_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# What names the cause of a failure, most telling first: a compiler or CMake error (the first one;
# pip's own "error: subprocess-exited-with-error" wrapper excluded), the ninja step that failed,
# then a Python exception (the last one: the line that ends its traceback).
ERROR_PATTERNS = (
    (re.compile(r"error:(?! (subprocess-exited-with-error|metadata-generation-failed))|CMake Error"), "first"),
    (re.compile(r"^FAILED:"), "first"),
    (re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b"), "last"),
)


def error_line(text: str) -> str:
    """The line of a log that best says why it failed; else its last line."""
    lines = text.splitlines()
    for pattern, which in ERROR_PATTERNS:
        hits = [line.strip() for line in lines if pattern.search(line)]
        if hits:
            return hits[0] if which == "first" else hits[-1]
    return last_line(text)


def last_json(text: str) -> Optional[dict]:
    """The JSON object a probe printed as its last line (warnings may precede it)."""
    try:
        value = json.loads(last_line(text))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def pytest_summary(text: str) -> str:
    """pytest's final "N passed, M failed ... in T s" line, or ''."""
    pattern = re.compile(r"\b\d+ (passed|failed|skipped|errors?|deselected|xfailed|xpassed)\b.* in [\d.]+s")
    lines = [line.strip(" =") for line in text.splitlines() if pattern.search(line)]
    return lines[-1] if lines else ""


def tests_ran(summary: str) -> bool:
    return re.search(r"\b\d+ (passed|failed)\b", summary) is not None


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


# ---------------------------------------------------------------------------------------------
# Stage: env


def stage_env(ctx: Context, log: StageLog) -> Outcome:
    facts = ctx.facts
    facts["cpus"] = str(ctx.cpus)
    gpu_facts(log, facts)
    python_facts(ctx, log, facts)
    git_facts(ctx, log, facts)
    nvcc_facts(log, facts)
    driver = f", driver {facts['driver']}" if "driver" in facts else ""
    summary = (f"{facts['gpu']}{driver}; torch {facts.get('torch', '?')} "
               f"(CUDA {facts.get('torch_cuda', '?')}), python {facts.get('python', '?')}; "
               f"commit {facts['commit'][:12]} ({facts['dirty_files']} dirty); nvcc {facts['nvcc']}")
    if facts.get("missing_modules"):
        summary += f"; missing: {facts['missing_modules']}"
    if not ctx.dry_run and facts.get("cuda_available") != "True":
        return Outcome("failed", "torch sees no CUDA device; " + summary)
    return Outcome("ok", summary)


def gpu_facts(log: StageLog, facts: Dict[str, str]) -> None:
    log.run(["nvidia-smi", "-L"], limit_s=15)
    res = log.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"], limit_s=15)
    rows = [line for line in res.output.splitlines()[1:] if line.count(",") >= 2] if res.rc == 0 else []
    if not rows:
        facts["gpu"] = "no GPU (nvidia-smi unavailable)"
        return
    name, driver, memory = (part.strip() for part in rows[0].split(",")[:3])
    facts["gpu"] = name if len(rows) == 1 else f"{len(rows)}x {name}"
    facts["driver"] = driver
    facts["gpu_memory"] = memory


def python_facts(ctx: Context, log: StageLog, facts: Dict[str, str]) -> None:
    info = last_json(log.run([ctx.python, "-c", TORCH_PROBE], limit_s=40).output) or {}
    for key in ("python", "torch", "torch_cuda", "cuda_available"):
        if key in info:
            facts[key] = str(info[key])
    if info.get("missing_modules"):
        facts["missing_modules"] = ", ".join(info["missing_modules"])


def git_facts(ctx: Context, log: StageLog, facts: Dict[str, str]) -> None:
    # safe.directory: the copied tree may belong to another user than the one running the check
    git = ["git", "-c", "safe.directory=*"]
    head = log.run(git + ["rev-parse", "HEAD"], limit_s=10)
    if head.rc != 0:
        facts["commit"] = f"unknown ({clip(last_line(head.output), 60) or 'git failed'})"
        facts["dirty_files"] = "?"
        return
    facts["commit"] = last_line(head.output)
    # The report's own directory, when inside the tree, is no local change.
    exclude = [f":(exclude){ctx.out.relative_to(REPO)}"] if REPO in ctx.out.parents else []
    status = log.run(git + ["status", "--porcelain", "--", ".", *exclude], limit_s=10)
    dirty = [line for line in status.output.splitlines() if line.strip()]
    facts["dirty_files"] = str(len(dirty)) if status.rc == 0 else "?"


def nvcc_facts(log: StageLog, facts: Dict[str, str]) -> None:
    nvcc = find_tool("nvcc")
    if nvcc is None:
        facts["nvcc"] = "not found"
        return
    match = re.search(r"release ([\d.]+)", log.run([nvcc, "--version"], limit_s=10).output)
    facts["nvcc"] = match.group(1) if match else "unknown version"


# ---------------------------------------------------------------------------------------------
# Stage: build


def build_env(ctx: Context) -> Dict[str, str]:
    jobs = str(ctx.cpus)
    env = {
        "TORCH_CUDA_ARCH_LIST": "9.0",  # the H200 only: half the compile time of the default 80;90
        "CMAKE_BUILD_PARALLEL_LEVEL": jobs,
        "MAX_JOBS": jobs,
        # The machine is offline: pip must never wait on an index or its version check.
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        # The system python may be marked externally managed (PEP 668); the machine is throwaway.
        "PIP_BREAK_SYSTEM_PACKAGES": "1",
    }
    nvcc = find_tool("nvcc")
    if nvcc and "CUDACXX" not in os.environ:  # CMake finds an nvcc outside PATH through CUDACXX
        env["CUDACXX"] = nvcc
    return env


def stage_build(ctx: Context, log: StageLog) -> Outcome:
    pip = log.run([ctx.python, "-m", "pip", "install", "-v", "--no-build-isolation", "--no-deps", "-e", "."],
                  env=build_env(ctx))
    if pip.timed_out:
        return Outcome("timeout", f"pip install killed after {pip.seconds:.0f} s; last: {last_line(pip.output)}")
    if pip.rc != 0:
        return Outcome("failed", f"pip install exit {pip.rc}: {error_line(pip.output)}")
    probe = log.run([ctx.python, "-c", BUILD_INFO_PROBE], limit_s=60)
    info = last_json(probe.output)
    if info is None:
        return Outcome("failed", f"import kexue failed: {error_line(probe.output)}")
    if not info.get("cuda"):
        return Outcome("failed", "built without the CUDA kernels: build_info()['cuda'] is False")
    return Outcome("ok", f"kexue {info.get('version')} for archs {','.join(info.get('cuda_archs', []))} "
                         f"against torch {info.get('torch_version')} (pip {pip.seconds:.0f} s)")


# ---------------------------------------------------------------------------------------------
# Stage: pytest-cuda


def read_junit(path: Path) -> Tuple[Dict[str, int], List[str]]:
    """Counts (tests, failures, errors, skipped, passed) and the failed tests' names."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = []
    for case in root.iter("testcase"):
        bad = next((child for child in case if child.tag in ("failure", "error")), None)
        if bad is not None:
            message = clip((bad.get("message") or "").split("\n")[0], 120)
            name = f"{case.get('classname')}::{case.get('name')}"
            failed.append(f"{name} — {message}" if message else name)
    return counts, failed


def stage_pytest_cuda(ctx: Context, log: StageLog) -> Outcome:
    xml = ctx.out / "pytest-cuda.xml"
    if xml.exists():  # a file from an earlier run must not pass for this one
        xml.unlink()
    res = log.run([ctx.python, *PYTEST, "-m", "cuda", "--maxfail=50", "--junitxml", str(xml)])
    if res.timed_out:  # pytest writes the xml only when it finishes: its last progress line is all
        return Outcome("timeout", f"killed after {res.seconds:.0f} s; last: {last_line(res.output)}")
    if not xml.exists():
        return Outcome("failed", f"no junit xml (exit {res.rc}): {pytest_summary(res.output) or error_line(res.output)}")
    counts, failed = read_junit(xml)
    summary = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failures", "errors", "skipped"))
    details = ""
    if failed:
        details = f"Failed tests ({len(failed)}):\n\n" + "\n".join(f"- `{name}`" for name in failed)
    if counts["passed"] == 0:
        return Outcome("failed", summary + "; nothing passed: is the GPU visible to the tests?", details)
    return Outcome("ok" if res.rc == 0 else "failed", summary, details)


# ---------------------------------------------------------------------------------------------
# Stages: sanitizer-<tool>


def sanitizer_stage(tool: str, selection: Sequence[str], limit_s: float) -> Stage:
    def run(ctx: Context, log: StageLog) -> Outcome:
        sanitizer = find_tool("compute-sanitizer")
        if sanitizer is None:
            return Outcome("skipped", "compute-sanitizer not found")
        # application-only: torch.compile's worker processes never run our kernels, and each
        # process under the sanitizer starts several times slower.
        cmd = [sanitizer, "--tool", tool, "--error-exitcode", "99", "--target-processes", "application-only",
               ctx.python, *PYTEST, *selection]
        # torch's caching allocator hands out slices of large blocks, which hides out-of-bounds
        # accesses and uninitialized reads from the sanitizer: give every tensor its own allocation.
        res = log.run(cmd, env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
        return sanitizer_outcome(res)

    return Stage(f"sanitizer-{tool}", limit_s, run)


def sanitizer_outcome(res: Result) -> Outcome:
    lines = re.findall(r"^=+ ((?:ERROR|RACECHECK) SUMMARY: .*)$", res.output, re.M)
    found = "; ".join(dict.fromkeys(line.strip() for line in lines)) or "no ERROR SUMMARY line"
    tests = pytest_summary(res.output)
    summary = f"{found}; tests: {tests or 'no pytest summary'}"
    if res.timed_out:
        return Outcome("timeout", f"killed after {res.seconds:.0f} s; {summary}")
    if res.rc == 99:
        return Outcome("failed", summary)
    if res.rc != 0:
        return Outcome("failed", f"exit {res.rc}; {summary}")
    if not tests_ran(tests):
        return Outcome("failed", f"no test ran under the sanitizer; {summary}")
    return Outcome("ok", summary)


# ---------------------------------------------------------------------------------------------
# Stages: bench-<family>


def bench_stage(family: str, limit_s: float) -> Stage:
    def run(ctx: Context, log: StageLog) -> Outcome:
        out = ctx.out / f"bench-{family}.json"
        if out.exists():  # a file from an earlier run must not pass for this one
            out.unlink()
        res = log.run([ctx.python, "-m", "kexue.cli", "bench", family, "--device", "cuda", "--json", str(out),
                       "-v", *BENCH_TIMING])
        if res.timed_out:
            started = len(re.findall(r": preparing ours$", res.output, re.M))
            return Outcome("timeout", f"killed after {res.seconds:.0f} s, {started} case(s) started; no JSON")
        if res.rc != 0 or not out.exists():
            return Outcome("failed", f"exit {res.rc}: {error_line(res.output)}")
        return Outcome("ok", bench_summary(json.loads(out.read_text())))

    return Stage(f"bench-{family}", limit_s, run)


def bench_summary(data: dict) -> str:
    """Case count, the geometric mean of each "x <peer>" speed-up, and the best TFLOP/s."""
    rows = data.get("results", [])
    parts = [f"{len(rows)} cases"]
    keys = list(dict.fromkeys(k for row in rows for k in row if k.startswith("x_")))
    for key in keys:
        values = [row[key] for row in rows if isinstance(row.get(key), (int, float)) and row[key] > 0]
        if values:
            parts.append(f"× {key[2:]} {geomean(values):.2f}")
    tflops = [row["ours_TFLOPs"] for row in rows if "ours_TFLOPs" in row]
    if tflops:
        parts.append(f"ours up to {max(tflops):.0f} TFLOP/s")
    return ", ".join(parts) + (" (geomean)" if keys else "")


# ---------------------------------------------------------------------------------------------
# Stage: sass


def demangle(log: StageLog, names: List[str]) -> List[str]:
    """Short signatures through c++filt, its command line and output logged."""
    def run(cmd: Sequence[str]) -> Tuple[int, str]:
        res = log.run(cmd, limit_s=10)
        return (1 if res.rc is None else res.rc), res.output

    return sass_tools.demangle(names, run)


def stage_sass(ctx: Context, log: StageLog) -> Outcome:
    cuobjdump = find_tool("cuobjdump")
    if cuobjdump is None:
        return Outcome("skipped", "cuobjdump not found")
    probe = log.run([ctx.python, "-c", EXTENSION_PROBE], limit_s=30)
    library = last_line(probe.output)
    if probe.rc != 0 or not os.path.isfile(library):
        return Outcome("failed", f"cannot locate kexue._C: {error_line(probe.output)}")
    res = log.run([cuobjdump, "-res-usage", library])
    if res.timed_out or res.rc != 0:
        return Outcome("timeout" if res.timed_out else "failed", f"cuobjdump exit {res.rc}: {last_line(res.output)}")
    (ctx.out / "sass-res-usage.txt").write_text(res.output)
    kernels = [k for k in parse_res_usage(res.output) if ATTENTION_KERNEL.search(k["name"])]
    if not kernels:
        return Outcome("failed", "no attention kernels in the cuobjdump -res-usage output")
    names = demangle(log, [k["name"] for k in kernels])
    return Outcome("ok", sass_summary(kernels), sass_details(kernels, names))


def sass_summary(kernels: List[dict]) -> str:
    regs = [k["REG"] for k in kernels]
    local = [k for k in kernels if k["LOCAL"] or k["STACK"]]
    archs = ",".join(sorted({k["arch"] for k in kernels}))
    return (f"{len(kernels)} attention kernels ({archs}): {min(regs)}-{max(regs)} registers, "
            f"{len(local)} with local memory (max {max(k['LOCAL'] for k in kernels)} B), "
            f"static shared up to {max(k['SHARED'] for k in kernels)} B")


def sass_details(kernels: List[dict], names: List[str]) -> str:
    lines = ["Raw output: `sass-res-usage.txt`. LOCAL > 0 means register spills or local arrays "
             "(cuobjdump counts no spills as such); SHARED is static shared memory only, the "
             "tensor-core tiles are dynamic shared memory sized at launch.", "",
             "| kernel | arch | registers | local B | stack B | static shared B |", "|---|---|---:|---:|---:|---:|"]
    for kernel, name in zip(kernels, names):
        lines.append(f"| `{clip(name, 120)}` | {kernel['arch']} | {kernel['REG']} | {kernel['LOCAL']} | "
                     f"{kernel['STACK']} | {kernel['SHARED']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The stage list and the run


def make_stages() -> List[Stage]:
    return [
        Stage("env", 45, stage_env, needs_gpu=False, needs_build=False),
        Stage("build", 300, stage_build, needs_build=False),
        # Static and a few seconds: right after the build, so the budget never squeezes it out.
        Stage("sass", 30, stage_sass),
        Stage("pytest-cuda", 180, stage_pytest_cuda),
        *(sanitizer_stage(tool, selection, limit) for tool, selection, limit in SANITIZER_RUNS),
        *(bench_stage(family, limit) for family, limit in BENCH_FAMILIES),
    ]


def skip_reason(stage: Stage, ctx: Context) -> Optional[str]:
    if ctx.interrupted is not None:
        return "interrupted"
    if ctx.dry_run and stage.needs_gpu:
        return DRY_RUN_REASON
    build = next((r["status"] for r in ctx.records if r["name"] == "build"), None)
    if stage.needs_build and build not in (None, "ok"):  # None: built by an earlier run (--only)
        return f"needs build ({build})"
    return None


def record(name: str, status: str, summary: str, seconds: float = 0.0, log: Optional[str] = None,
           limit_s: Optional[float] = None, details: str = "") -> dict:
    return {"name": name, "status": status, "seconds": round(seconds, 1), "summary": clip(summary),
            "log": log, "limit_s": None if limit_s is None else round(limit_s, 1), "details": details}


def run_stage(stage: Stage, ctx: Context, budget: Budget) -> dict:
    """Run one stage within its share of the budget; whatever happens inside becomes its record."""
    reason = skip_reason(stage, ctx)
    limit = None if reason else budget.allot(stage.limit_s)
    if reason or limit is None:
        return record(stage.name, "skipped", reason or BUDGET_REASON)
    rel = f"logs/{stage.name}.log"
    log = StageLog(ctx.out / rel, limit, budget.clock)
    t0 = budget.clock()
    try:
        outcome = stage.run(ctx, log)
        if outcome.status not in STATUSES:
            raise ValueError(f"stage returned unknown status {outcome.status!r}")
    except (Interrupted, KeyboardInterrupt) as err:
        ctx.interrupted = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        outcome = Outcome("failed", f"interrupted by {signal.Signals(ctx.interrupted).name}")
    except Exception as err:  # a bug or a surprise in one stage must not cost the others
        log.note(traceback.format_exc())
        outcome = Outcome("failed", f"exception {type(err).__name__}: {err}")
    finally:
        log.close()
    return record(stage.name, outcome.status, outcome.summary, budget.clock() - t0, rel, limit, outcome.details)


def run_stages(stages: Sequence[Stage], ctx: Context, budget: Budget,
               on_record: Callable[[], None] = lambda: None) -> List[dict]:
    for stage in stages:
        rec = run_stage(stage, ctx, budget)
        ctx.records.append(rec)
        print(f"[{budget.elapsed():4.0f} s] {rec['name']:<21} {rec['status']:<8} {rec['seconds']:5.0f} s  "
              f"{clip(rec['summary'], 100)}", file=sys.stderr, flush=True)
        on_record()
    return ctx.records


# ---------------------------------------------------------------------------------------------
# The report


def markdown_report(ctx: Context, budget: Budget, complete: bool) -> str:
    records = ctx.records
    counts = ", ".join(f"{sum(r['status'] == s for r in records)} {s}" for s in STATUSES)
    title = "# kexue gpu-check" + (" (dry run)" if ctx.dry_run else "")
    lines = [title, "", f"{counts}; {budget.elapsed():.0f} s of the {budget.total_s:.0f} s budget."]
    if not complete:
        lines.append("**Partial report: the run was still going (or was killed) when this was written.**")
    if ctx.interrupted is not None:
        lines.append(f"**Interrupted by {signal.Signals(ctx.interrupted).name}.**")
    lines += ["", "| stage | status | seconds | summary |", "|---|---|---:|---|"]
    for r in records:
        name = f"[{r['name']}]({r['log']})" if r["log"] else r["name"]
        summary = r["summary"].replace("|", "\\|")
        lines.append(f"| {name} | {r['status']} | {r['seconds']:.0f} | {summary} |")
    lines += ["", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in ctx.facts.items()] or ["- (env did not run)"]
    for r in records:
        if r["details"]:
            lines += ["", f"## {r['name']}", "", r["details"]]
    return "\n".join(lines) + "\n"


def write_report(ctx: Context, budget: Budget, complete: bool) -> str:
    """Write OUT/report.md and OUT/report.json (each replaced whole) and return the Markdown."""
    markdown = markdown_report(ctx, budget, complete)
    data = {"dry_run": ctx.dry_run, "complete": complete, "elapsed_s": round(budget.elapsed(), 1),
            "budget_s": budget.total_s, "interrupted": ctx.interrupted is not None,
            "facts": ctx.facts, "stages": ctx.records}
    for name, text in (("report.md", markdown), ("report.json", json.dumps(data, indent=2) + "\n")):
        tmp = ctx.out / f"{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, ctx.out / name)
    return markdown


# ---------------------------------------------------------------------------------------------
# Command line


def named(stage_name: str, token: str) -> bool:
    """--only tokens are stage names or groups: "sanitizer" names every sanitizer-<tool>."""
    return stage_name == token or stage_name.startswith(token + "-")


def select(stages: List[Stage], only: Optional[List[str]]) -> List[Stage]:
    """The stages named by --only, always with env, whose facts head the report."""
    if not only:
        return stages
    return [s for s in stages if s.name == "env" or any(named(s.name, t) for t in only)]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    names = [s.name for s in make_stages()]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu-check-out", help="directory for the logs and the report")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="global deadline in s")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: report the GPU stages as skipped")
    parser.add_argument("--only", default=None, metavar="STAGE,...",
                        help=f"run these stages (env always runs; groups: sanitizer, bench): {', '.join(names)}")
    args = parser.parse_args(argv)
    if args.budget <= REPORT_RESERVE_S:
        parser.error(f"--budget must be more than {REPORT_RESERVE_S:.0f} s")
    if args.only is not None:
        args.only = [t.strip() for t in args.only.split(",") if t.strip()]
        # report: always written, accepted for symmetry with the stage list
        unknown = [t for t in args.only if t != "report" and not any(named(n, t) for n in names)]
        if unknown or not args.only:
            parser.error(f"--only: unknown stage {', '.join(unknown) or '(none given)'}; choose from {', '.join(names)}")
    return args


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def usable_cpus() -> int:
    """The CPUs this process may run on (a container may see more than it is given)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget)
    ctx = Context(out=Path(args.out).resolve(), python=sys.executable, dry_run=args.dry_run,
                  cpus=usable_cpus())
    (ctx.out / "logs").mkdir(parents=True, exist_ok=True)
    stages = select(make_stages(), args.only)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        run_stages(stages, ctx, budget, lambda: write_report(ctx, budget, False))
    except (Interrupted, KeyboardInterrupt) as err:  # between stages; inside one, run_stage handles it
        ctx.interrupted = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        done = {r["name"] for r in ctx.records}
        ctx.records += [record(s.name, "skipped", "interrupted") for s in stages if s.name not in done]
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    print(write_report(ctx, budget, True))
    return 0 if ctx.interrupted is None else 128 + int(ctx.interrupted)


if __name__ == "__main__":
    sys.exit(main())
