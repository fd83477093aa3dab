#!/usr/bin/env python3
"""Static report of every CUDA kernel for sm_90, no GPU needed: ``make sass-report``.

Each csrc/cuda/*.cu is compiled to a cubin with ``nvcc -cubin -arch=sm_90 -Xptxas -v`` (the
include path and language standard of ``make cuda-check``), at most two at a time. Per kernel
(entry function) the report gives:

- from ptxas -v: registers, stack frame, spill store/load bytes, static shared memory, barriers;
- from ``cuobjdump -elf``: EIATTR_MAX_THREADS (``__launch_bounds__``), hence the occupancy on
  sm_90 by the CUDA occupancy formula (cuda_occupancy.h) from registers and static shared memory;
  dynamic shared memory is sized at launch and NOT included;
- from ``cuobjdump -sass``: opcode counts (HMMA, LDSM, LDGSTS, LDL, STL, ...) and the loops,
  found as backward branches (a BRA whose target lies before it; the body is [target, branch],
  back edges to one target merged). The kernel's main loop is the loop with the most HMMA (of
  those, the innermost), else the largest loop; its static counts are the instructions one
  iteration issues per warp, e.g. per K/V tile of an attention kernel.

Output: a Markdown table on stdout and, with ``--out DIR``, DIR/sass_report.md and
DIR/sass_report.json. ``--check BASELINE`` compares with a committed baseline (exit 1 with one line
per problem): spills or local-memory instructions gained, registers up by more than
``REG_SLACK``, HMMA/LDSM/LDGSTS counts (total or per main-loop iteration) changed, a kernel
added or gone. ``--update-baseline [PATH]`` writes the baseline deliberately.

cuobjdump and nvdisasm are taken from PATH or from nvidia/cu*/bin of a site-packages of the
running Python (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm).

Standard library only, Python 3.9+.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sass_tools import demangle, find_cuda_binary, find_tool  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ARCH = "sm_90"
# make cuda-check's include path and standard; one cubin for sm_90 with ptxas's resource lines.
NVCC_FLAGS = ["-std=c++17", "-Icsrc", "-cubin", f"-arch={ARCH}", "-Xptxas", "-v"]
DEFAULT_BASELINE = "bench/sass_baseline.json"
COUNTED = ("HMMA", "LDSM", "LDGSTS", "LDL", "STL", "LDS", "STS", "LDG", "STG", "LD", "ST", "SHFL", "BAR")
LOOP_COUNTED = ("HMMA", "LDSM", "LDGSTS", "LDL", "STL", "LD")  # LD: generic loads (bf16 WMMA fragments)
CHECKED_COUNTS = ("HMMA", "LDSM", "LDGSTS")  # any change fails --check
REG_SLACK = 8  # --check fails when a kernel's registers rise by more than this
ASSUMED_THREADS = 256  # occupancy of a kernel without __launch_bounds__ is shown for this block size

# sm_90 (H100/H200) as the CUDA occupancy calculator (cuda_occupancy.h) sees it.
SM90 = {
    "regs_per_sm": 65536,
    "regs_per_block": 65536,
    "reg_alloc_granularity": 256,  # registers per warp: regs·32 rounded up to 256 (regs to 8)
    "max_regs_per_thread": 255,
    "sub_partitions": 4,  # registers are allocated per sub-partition: 16384 each
    "max_warps": 64,
    "max_blocks": 32,
    "max_threads_per_block": 1024,
    "smem_per_sm": 228 * 1024,
    "smem_reserved_per_block": 1024,
    "smem_granularity": 128,
}


def refresh_hint(baseline: str) -> str:
    return (f"if the change is deliberate, refresh the baseline and commit it: "
            f"python tools/sass_report.py --update-baseline {baseline}")


# ---------------------------------------------------------------------------------------------
# Parsers


PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
PTXAS_PROPS = re.compile(r"Function properties for (\S+)")
PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
PTXAS_USED = re.compile(r"Used (\d+) registers")


def parse_ptxas(text: str) -> Dict[str, dict]:
    """ptxas -v per function (mangled name): {entry, arch, regs, barriers, smem, stack,
    cumulative_stack, spill_stores, spill_loads}. Non-entry functions (device functions that
    were not inlined) have only the frame numbers and entry False."""
    funcs: Dict[str, dict] = {}
    entry: Optional[str] = None  # the entry function whose "Used ..." line comes next
    props: Optional[str] = None  # the function whose frame line comes next

    def new(name: str, is_entry: bool, arch: str = "?") -> dict:
        return funcs.setdefault(name, {"entry": is_entry, "arch": arch, "regs": None, "barriers": 0, "smem": 0,
                                       "stack": 0, "cumulative_stack": 0, "spill_stores": 0, "spill_loads": 0})

    for line in text.splitlines():
        match = PTXAS_ENTRY.search(line)
        if match:
            entry = match.group(1)
            new(entry, True, match.group(2))
            continue
        match = PTXAS_PROPS.search(line)
        if match:
            props = match.group(1)
            new(props, False)
            continue
        match = PTXAS_FRAME.search(line)
        if match and props:
            f = funcs[props]
            f["stack"], f["spill_stores"], f["spill_loads"] = (int(g) for g in match.groups())
            props = None
            continue
        match = PTXAS_USED.search(line)
        if match and entry:
            f = funcs[entry]
            f["regs"] = int(match.group(1))
            for key, pattern in (("barriers", r"used (\d+) barriers"), ("smem", r"(\d+) bytes smem"),
                                 ("cumulative_stack", r"(\d+) bytes cumulative stack size")):
                found = re.search(pattern, line)
                if found:
                    f[key] = int(found.group(1))
            entry = None
    return funcs


SASS_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
SASS_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
PREDICATE = re.compile(r"^@!?U?P(?:T|\d+)\s+")


def parse_sass(text: str) -> Dict[str, List[Tuple[int, str, str]]]:
    """``cuobjdump -sass`` per function: [(address, opcode with modifiers, operands)]."""
    funcs: Dict[str, List[Tuple[int, str, str]]] = {}
    current: Optional[List[Tuple[int, str, str]]] = None
    for line in text.splitlines():
        match = SASS_FUNCTION.match(line)
        if match:
            current = funcs.setdefault(match.group(1), [])
            continue
        match = SASS_INSTR.match(line)
        if match and current is not None:
            body = PREDICATE.sub("", match.group(2))
            opcode, _, operands = body.partition(" ")
            current.append((int(match.group(1), 16), opcode, operands.strip()))
    return funcs


def base_opcode(opcode: str) -> str:
    return opcode.split(".", 1)[0]


def opcode_counts(instrs: Sequence[Tuple[int, str, str]]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for _, opcode, _ in instrs:
        base = base_opcode(opcode)
        counts[base] = counts.get(base, 0) + 1
    return counts


def find_loops(instrs: Sequence[Tuple[int, str, str]]) -> List[dict]:
    """Loops as backward branches: a BRA whose target address is lower than its own. The body is
    [target, branch]; several back edges to one target make one loop ending at the last. Each
    loop: {start, end, instructions, depth (loops around it), and the LOOP_COUNTED counts}."""
    ends: Dict[int, int] = {}
    for address, opcode, operands in instrs:
        if base_opcode(opcode) != "BRA":
            continue
        targets = re.findall(r"0x([0-9a-f]+)", operands)
        if targets and int(targets[-1], 16) < address:
            start = int(targets[-1], 16)
            ends[start] = max(ends.get(start, address), address)
    loops = []
    for start, end in sorted(ends.items()):
        body = [i for i in instrs if start <= i[0] <= end]
        counts = opcode_counts(body)
        loops.append({"start": start, "end": end, "instructions": len(body),
                      **{k: counts.get(k, 0) for k in LOOP_COUNTED}})
    for loop in loops:
        loop["depth"] = sum(o is not loop and o["start"] <= loop["start"] and loop["end"] <= o["end"]
                            for o in loops)
    return loops


def main_loop(loops: Sequence[dict]) -> Optional[dict]:
    """The loop with the most HMMA, the innermost (smallest) of those; without HMMA the largest."""
    if not loops:
        return None
    if any(loop["HMMA"] for loop in loops):
        return min(loops, key=lambda l: (-l["HMMA"], l["instructions"], l["start"]))
    return max(loops, key=lambda l: (l["instructions"], -l["start"]))


def in_loops(instrs: Sequence[Tuple[int, str, str]], loops: Sequence[dict], opcode: str) -> int:
    """Instructions with this base opcode inside any loop."""
    return sum(base_opcode(op) == opcode and any(l["start"] <= a <= l["end"] for l in loops) for a, op, _ in instrs)


def parse_elf_attributes(text: str) -> Dict[str, dict]:
    """EIATTR_MAX_THREADS / EIATTR_REQNTID / EIATTR_MAXREG_COUNT of each function's .nv.info
    section in ``cuobjdump -elf`` output: {name: {"MAX_THREADS": [x, y, z], ...}}."""
    attrs: Dict[str, dict] = {}
    function: Optional[str] = None
    attribute: Optional[str] = None
    for line in text.splitlines():
        if line.startswith("."):  # a section header
            function = line[len(".nv.info."):].strip() if line.startswith(".nv.info.") else None
            attribute = None
            continue
        if function is None:
            continue
        match = re.match(r"\s*Attribute:\s*EIATTR_(\w+)", line)
        if match:
            attribute = match.group(1)
            continue
        match = re.match(r"\s*Value:\s*(.*)", line)
        if match and attribute in ("MAX_THREADS", "REQNTID", "MAXREG_COUNT", "MIN_CTA_PER_SM"):
            attrs.setdefault(function, {})[attribute] = [int(v, 16) for v in re.findall(r"0x[0-9a-f]+", match.group(1))]
            attribute = None
    return attrs


def block_threads(attrs: dict) -> Optional[int]:
    """Threads per block from __launch_bounds__ (MAX_THREADS) or a required size (REQNTID)."""
    for key in ("REQNTID", "MAX_THREADS"):
        dims = attrs.get(key)
        if dims:
            return math.prod(dims)
    return None


def normalize_mangled(name: str) -> str:
    """The mangled name with nvcc's per-file anonymous namespace
    ``<len>_GLOBAL__N__<hash>_<n>_<file>_<hash>`` (its hashes depend on the source's path) replaced
    by the usual ``12_GLOBAL__N_1``, so that a baseline matches in any checkout."""
    out, pos = [], 0
    for match in re.finditer(r"(\d+)_GLOBAL__N__", name):
        digits, p = match.group(1), match.start() + len(match.group(1))
        for cut in range(len(digits) - 1, -1, -1):  # the token's length is a suffix of the digits
            length = int(digits[cut:])
            token = re.fullmatch(r"_GLOBAL__N__[0-9a-f]+_(\d+)_?(.+)_[0-9a-f]+", name[p:p + length])
            if token and len(token.group(2)) == int(token.group(1)):
                out += [name[pos:match.start() + cut], "12_GLOBAL__N_1"]
                pos = p + length
                break
    return "".join(out) + name[pos:]


# ---------------------------------------------------------------------------------------------
# Occupancy


def round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def occupancy(regs: int, threads: int, static_smem: int, dynamic_smem: int = 0, spec: dict = SM90) -> dict:
    """Resident blocks and warps per SM by the CUDA occupancy formula (cudaOccMaxActiveBlocks-
    PerMultiprocessor without a cache preference): the least of the block-slot, warp-slot,
    register and shared-memory limits. {blocks, warps, percent, limiter}."""
    warps = -(-threads // 32)
    limits = {"blocks": spec["max_blocks"]}
    limits["warps"] = spec["max_warps"] // warps if threads <= spec["max_threads_per_block"] else 0
    if regs > 0:
        per_warp = round_up(regs * 32, spec["reg_alloc_granularity"])
        fits = (regs <= spec["max_regs_per_thread"]
                and per_warp * round_up(warps, spec["sub_partitions"]) <= spec["regs_per_block"])
        per_sub = spec["regs_per_sm"] // spec["sub_partitions"] // per_warp
        limits["registers"] = per_sub * spec["sub_partitions"] // warps if fits else 0
    smem = round_up(static_smem + dynamic_smem + spec["smem_reserved_per_block"], spec["smem_granularity"])
    limits["shared memory"] = spec["smem_per_sm"] // smem if smem <= spec["smem_per_sm"] else 0
    blocks = min(limits.values())
    limiter = ", ".join(k for k, v in limits.items() if v == blocks)
    return {"blocks": blocks, "warps": blocks * warps, "percent": round(100.0 * blocks * warps / spec["max_warps"], 1),
            "limiter": limiter}


# ---------------------------------------------------------------------------------------------
# Running the tools


class ToolError(Exception):
    pass


def tool_env(nvdisasm: Optional[str]) -> Dict[str, str]:
    """The environment for cuobjdump: nvdisasm's directory on PATH (cuobjdump runs it for -sass)."""
    env = dict(os.environ)
    if nvdisasm:
        env["PATH"] = os.path.dirname(nvdisasm) + os.pathsep + env.get("PATH", "")
    return env


def run(cmd: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(list(cmd), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ToolError(f"{Path(cmd[0]).name}: {err}") from err
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-15:])
        raise ToolError(f"{' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))} exit {res.returncode}:\n{tail}")
    return res


def tool_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(r"release [\d.]+, V([\d.]+)", out)
    return match.group(1) if match else "unknown"


def analyse_file(source: str, tools: dict, tmp: str) -> dict:
    """Compile one .cu to a cubin and read its kernels: {file, seconds, ptxas_log, kernels}."""
    t0 = time.monotonic()
    cubin = os.path.join(tmp, Path(source).stem + ".cubin")
    res = run([tools["nvcc"], *NVCC_FLAGS, source, "-o", cubin])
    ptxas_log = res.stdout + res.stderr
    env = tool_env(tools["nvdisasm"])
    sass = parse_sass(run([tools["cuobjdump"], "-sass", cubin], env).stdout)
    elf = parse_elf_attributes(run([tools["cuobjdump"], "-elf", cubin], env).stdout)
    kernels, functions = [], parse_ptxas(ptxas_log)
    for mangled, ptx in functions.items():
        if not ptx["entry"]:
            continue
        if mangled not in sass:
            raise ToolError(f"{source}: {mangled} is in the ptxas output but not in cuobjdump -sass")
        kernels.append(kernel_record(source, mangled, ptx, sass[mangled], elf.get(mangled, {})))
    device_functions = {name: p for name, p in functions.items() if not p["entry"]}
    return {"file": source, "seconds": round(time.monotonic() - t0, 1), "ptxas_log": ptxas_log,
            "kernels": kernels, "device_functions": device_functions}


def kernel_record(source: str, mangled: str, ptx: dict, instrs: list, attrs: dict) -> dict:
    counts = opcode_counts(instrs)
    loops = find_loops(instrs)
    loop = main_loop(loops)
    threads = block_threads(attrs)
    regs = ptx["regs"] or 0
    occ = occupancy(regs, threads or ASSUMED_THREADS, ptx["smem"])
    return {
        "key": normalize_mangled(mangled),
        "mangled": mangled,
        "file": source,
        "regs": regs,
        "spill_stores": ptx["spill_stores"],
        "spill_loads": ptx["spill_loads"],
        "stack": ptx["stack"],
        "cumulative_stack": ptx["cumulative_stack"],
        "static_smem": ptx["smem"],
        "barriers": ptx["barriers"],
        "max_threads": threads,
        "maxreg_count": (attrs.get("MAXREG_COUNT") or [None])[0],
        "occupancy": {**occ, "threads": threads or ASSUMED_THREADS, "assumed_threads": threads is None},
        "instructions": len(instrs),
        "counts": {k: counts.get(k, 0) for k in COUNTED},
        "opcodes": dict(sorted(counts.items())),
        "loops": len(loops),
        "main_loop": loop,
        "in_loops": {k: in_loops(instrs, loops, k) for k in ("LDL", "STL")},
    }


def find_tools(nvcc: Optional[str]) -> dict:
    tools = {"nvcc": nvcc or os.environ.get("NVCC") or find_tool("nvcc"),
             "cuobjdump": find_cuda_binary("cuobjdump"), "nvdisasm": find_cuda_binary("nvdisasm")}
    if tools["nvcc"] and os.sep not in tools["nvcc"]:
        tools["nvcc"] = find_tool(tools["nvcc"]) or tools["nvcc"]
    missing = [name for name, path in tools.items() if not path]
    if missing:
        raise ToolError(f"not found: {', '.join(missing)} (looked on PATH, in nvidia/cu*/bin of this Python's "
                        f"site-packages and in /usr/local/cuda/bin); install the tools with "
                        f"`{sys.executable} -m pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm`"
                        + ("; nvcc comes with the CUDA toolkit (or set NVCC)" if "nvcc" in missing else ""))
    return tools


def collect(sources: Sequence[str], tools: dict, jobs: int,
            kernels_per_file: Optional[Dict[str, int]] = None) -> Tuple[List[dict], float]:
    """Every source analysed, at most ``jobs`` at a time. The longest compiles start first: by
    the kernels per file of the baseline when there is one (template instances cost more than
    lines), else by size."""
    t0 = time.monotonic()
    counts = kernels_per_file or {}
    order = sorted(sources, key=lambda s: (-counts.get(s, 0), -os.path.getsize(REPO / s)))
    with tempfile.TemporaryDirectory(prefix="sass_report.") as tmp, ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {s: pool.submit(analyse_file, s, tools, tmp) for s in order}
        results = []
        for source in sources:
            results.append(futures[source].result())
            print(f"sass-report: {source} in {results[-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    return results, time.monotonic() - t0


def natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def assemble(results: List[dict], tools: dict, wall_s: float, jobs: int) -> dict:
    kernels = [k for r in results for k in r["kernels"]]
    for kernel, name in zip(kernels, demangle([k["mangled"] for k in kernels])):
        kernel["name"] = name
    kernels.sort(key=lambda k: (k["file"], natural_key(k["name"])))
    # The baseline's key: the normalized mangled name, with the file in front where two files
    # define the same one (anonymous namespaces look alike once normalized).
    seen: Dict[str, int] = {}
    for k in kernels:
        seen[k["key"]] = seen.get(k["key"], 0) + 1
    for k in kernels:
        if seen[k["key"]] > 1:
            k["key"] = f"{k['file']}:{k['key']}"
    device_functions = {name: f for r in results for name, f in r["device_functions"].items()}
    return {
        "arch": ARCH,
        "nvcc": tool_version(tools["nvcc"]),
        "cuobjdump": tool_version(tools["cuobjdump"]),
        "flags": " ".join(NVCC_FLAGS),
        "wall_s": round(wall_s, 1),
        "jobs": jobs,
        "files": {r["file"]: {"seconds": r["seconds"], "kernels": len(r["kernels"])} for r in results},
        "device_functions": device_functions,
        "summary": summarize(kernels, device_functions),
        "kernels": kernels,
    }


def summarize(kernels: List[dict], device_functions: Optional[dict] = None) -> dict:
    spilling = [k for k in kernels if k["spill_stores"] or k["spill_loads"]]
    local = [k for k in kernels if k["counts"]["LDL"] or k["counts"]["STL"]]
    local_loops = [k for k in kernels if k["in_loops"]["LDL"] or k["in_loops"]["STL"]]
    main_local = [k for k in kernels if k["main_loop"] and (k["main_loop"]["LDL"] or k["main_loop"]["STL"])]
    return {
        "kernels": len(kernels),
        "files": len({k["file"] for k in kernels}),
        "with_spills": len(spilling),
        "with_local_memory": len(local),
        "with_local_memory_in_loops": len(local_loops),
        "with_local_memory_in_main_loop": len(main_local),
        "spilling": [k["name"] for k in spilling],
        "max_regs": max((k["regs"] for k in kernels), default=0),
        "device_functions_with_spills": sorted(n for n, f in (device_functions or {}).items()
                                               if f["spill_stores"] or f["spill_loads"]),
    }


# ---------------------------------------------------------------------------------------------
# Markdown


def table_name(name: str) -> str:
    return name.replace("kx::cuda::", "").replace("|", "\\|")


def markdown_table(kernels: Sequence[dict]) -> List[str]:
    lines = ["| file | kernel | regs | spill St/Ld B | stack B | static smem B | max threads | occupancy warps/SM (%) "
             "| HMMA / LDSM / LDGSTS | per main-loop iteration | LDL / STL | LDL / STL in loops |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k in kernels:
        occ = k["occupancy"]
        threads = str(k["max_threads"]) if k["max_threads"] else "unknown"
        mark = "†" if occ["assumed_threads"] else ""
        occupancy_cell = f"{occ['warps']} ({occ['percent']:g}%){mark}"
        loop = k["main_loop"]
        per_iter = "no loop" if loop is None else " / ".join(str(loop[c]) for c in ("HMMA", "LDSM", "LDGSTS"))
        if loop is not None and (loop["LDL"] or loop["STL"]):
            per_iter += f" (LDL {loop['LDL']}, STL {loop['STL']})"
        c = k["counts"]
        lines.append(
            f"| {Path(k['file']).name} | `{table_name(k['name'])}` | {k['regs']} | {k['spill_stores']}/{k['spill_loads']} "
            f"| {k['stack']} | {k['static_smem']} | {threads} | {occupancy_cell} "
            f"| {c['HMMA']} / {c['LDSM']} / {c['LDGSTS']} | {per_iter} | {c['LDL']} / {c['STL']} "
            f"| {k['in_loops']['LDL']} / {k['in_loops']['STL']} |")
    return lines


def summary_line(s: dict, names: int = 3) -> str:
    listed = ", ".join(f"`{table_name(n)}`" for n in s["spilling"][:names])
    more = f" and {s['with_spills'] - names} more" if s["with_spills"] > names else ""
    spills = f"{s['with_spills']} with spills ({listed}{more})" if s["with_spills"] else "no spills"
    return (f"{s['kernels']} kernels in {s['files']} files: {spills}; {s['with_local_memory']} with local-memory "
            f"instructions (LDL/STL), {s['with_local_memory_in_loops']} of them inside a loop, "
            f"{s['with_local_memory_in_main_loop']} in the main loop; at most {s['max_regs']} registers")


def markdown_report(report: dict, command: str) -> str:
    lines = [f"# Static SASS report, {report['arch']} (no GPU needed)", "",
             f"`{command}`: nvcc {report['nvcc']} (`nvcc {report['flags']}`), cuobjdump {report['cuobjdump']}; "
             f"{len(report['files'])} files compiled {report['jobs']} at a time in {report['wall_s']:.0f} s.", "",
             summary_line(report["summary"]) + ".", ""]
    if report["summary"]["device_functions_with_spills"]:
        lines += [f"Non-inlined device functions with spills: {', '.join(report['summary']['device_functions_with_spills'])}.", ""]
    lines += markdown_table(report["kernels"])
    lines += ["",
              "- Occupancy: resident warps per SM on sm_90 (64 at most) by the CUDA occupancy formula from "
              "the registers, the block size of `__launch_bounds__` (EIATTR_MAX_THREADS) and static shared "
              "memory + 1 KB reserved per block; **dynamic shared memory is not included** (the "
              "tensor-core kernels size their tiles at launch, which lowers their real occupancy). "
              f"† no `__launch_bounds__`: block size unknown, shown for {ASSUMED_THREADS} threads.",
              "- Counts are static SASS instructions per warp. Main loop: the loop (a backward branch; body from "
              "its target to the branch) with the most HMMA, the innermost of those, else the largest loop; "
              "its counts are one iteration's (for the attention kernels: one K/V or Q tile), inner loops "
              "counted once, out-of-line code and called subroutines not at all.",
              "- spill St/Ld: ptxas's spill store/load bytes; stack: its stack frame; LDL/STL: local-memory "
              "loads/stores in the SASS (spills, local arrays)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Baseline


def baseline_entry(k: dict) -> dict:
    loop = k["main_loop"] or {}
    return {
        "name": k["name"], "file": k["file"], "regs": k["regs"],
        "spill_stores": k["spill_stores"], "spill_loads": k["spill_loads"], "stack": k["stack"],
        "LDL": k["counts"]["LDL"], "STL": k["counts"]["STL"],
        **{c: k["counts"][c] for c in CHECKED_COUNTS},
        **{f"loop_{c}": loop.get(c) for c in LOOP_COUNTED},
        "max_threads": k["max_threads"], "static_smem": k["static_smem"],
    }


def make_baseline(report: dict) -> dict:
    return {
        "about": "tools/sass_report.py --check compares with this; refresh deliberately with "
                 "`python tools/sass_report.py --update-baseline bench/sass_baseline.json`. Keys: mangled "
                 "names, nvcc's per-file anonymous namespaces written as 12_GLOBAL__N_1.",
        "arch": report["arch"], "nvcc": report["nvcc"], "flags": report["flags"],
        "kernels": {k["key"]: baseline_entry(k) for k in sorted(report["kernels"], key=lambda k: k["key"])},
    }


def compare(baseline: dict, report: dict, files: Optional[Sequence[str]] = None) -> Tuple[List[str], List[str]]:
    """(problems, notes) of this report against the baseline. With ``files``, only the baseline's
    kernels of those files are expected."""
    old = baseline.get("kernels", {})
    if files is not None:
        old = {key: b for key, b in old.items() if b.get("file") in set(files)}
    new = {k["key"]: baseline_entry(k) for k in report["kernels"]}
    problems, notes = [], []
    for key in sorted(set(old) - set(new)):
        problems.append(f"kernel gone: {old[key]['name']} ({old[key]['file']})")
    for key in sorted(set(new) - set(old)):
        problems.append(f"new kernel: {new[key]['name']} ({new[key]['file']})")
    for key in sorted(set(old) & set(new)):
        n = new[key]
        b = {**dict.fromkeys(n, 0), **old[key]}  # a field the baseline lacks counts as 0
        who = f"{n['name']} ({Path(n['file']).name})"
        for field, what in (("spill_stores", "spill stores B"), ("spill_loads", "spill loads B"),
                            ("LDL", "LDL instructions"), ("STL", "STL instructions")):
            if n[field] > b[field]:
                problems.append(f"{who}: {what} {b[field]} -> {n[field]}")
            elif n[field] < b[field]:
                notes.append(f"{who}: {what} {b[field]} -> {n[field]} (better; refresh the baseline to keep it)")
        if n["regs"] > b["regs"] + REG_SLACK:
            problems.append(f"{who}: registers {b['regs']} -> {n['regs']} (more than +{REG_SLACK})")
        for field in (*CHECKED_COUNTS, *(f"loop_{c}" for c in CHECKED_COUNTS)):
            if n[field] != b[field]:
                label = field.replace("loop_", "") + (" per main-loop iteration" if field.startswith("loop_") else "")
                problems.append(f"{who}: {label} {b[field]} -> {n[field]}")
    if problems and baseline.get("nvcc") not in (None, report.get("nvcc")):
        notes.append(f"the baseline was made with nvcc {baseline.get('nvcc')}, this run used nvcc "
                     f"{report.get('nvcc')}: compiler changes move these numbers too")
    return problems, notes


# ---------------------------------------------------------------------------------------------
# Command line


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write sass_report.md, sass_report.json and the ptxas logs here")
    parser.add_argument("--check", metavar="BASELINE", help="compare with this baseline JSON; exit 1 on a regression")
    parser.add_argument("--update-baseline", metavar="PATH", nargs="?", const=DEFAULT_BASELINE,
                        help=f"write the baseline (default {DEFAULT_BASELINE})")
    parser.add_argument("--files", nargs="+", metavar="CU",
                        help="these sources only (default: csrc/cuda/*.cu); --check then expects only their kernels")
    parser.add_argument("--jobs", type=int, default=2, help="parallel compilations (default 2)")
    parser.add_argument("--nvcc", help="the nvcc to use (default: $NVCC, else nvcc on PATH or in /usr/local/cuda)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.update_baseline and args.files:
        parser.error("--update-baseline needs every source: drop --files")
    return args


def sources_of(files: Optional[Sequence[str]]) -> List[str]:
    if files:
        out = []
        for f in files:
            path = Path(f).resolve()
            if not path.is_file():
                raise ToolError(f"no such source: {f}")
            out.append(str(path.relative_to(REPO)) if REPO in path.parents else str(path))
        return out
    found = sorted(str(p.relative_to(REPO)) for p in (REPO / "csrc" / "cuda").glob("*.cu"))
    if not found:
        raise ToolError("no csrc/cuda/*.cu found")
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    command = "python tools/sass_report.py " + " ".join(argv if argv is not None else sys.argv[1:])
    baseline = None
    if args.check:
        path = Path(args.check) if os.path.isabs(args.check) else REPO / args.check
        baseline = json.loads(path.read_text()) if path.is_file() else None
    try:
        sources = sources_of(args.files)
        tools = find_tools(args.nvcc)
        per_file: Dict[str, int] = {}
        for entry in (baseline or {}).get("kernels", {}).values():
            per_file[entry.get("file")] = per_file.get(entry.get("file"), 0) + 1
        results, wall_s = collect(sources, tools, args.jobs, per_file)
        report = assemble(results, tools, wall_s, args.jobs)
    except ToolError as err:
        print(f"sass-report: {err}", file=sys.stderr)
        return 2
    markdown = markdown_report(report, command.strip())
    print(markdown)
    if args.out:
        out = Path(args.out)
        write_atomic(out / "sass_report.md", markdown)
        write_atomic(out / "sass_report.json", json.dumps(report, indent=1) + "\n")
        for r in results:
            write_atomic(out / "ptxas" / (Path(r["file"]).stem + ".txt"), r["ptxas_log"])
    summary = report["summary"]
    print(f"sass-report: {summary['kernels']} kernels from {len(sources)} files in {wall_s:.1f} s "
          f"({args.jobs} compilations at a time)", file=sys.stderr)
    if args.update_baseline:
        write_atomic(REPO / args.update_baseline if not os.path.isabs(args.update_baseline) else Path(args.update_baseline),
                     json.dumps(make_baseline(report), indent=1) + "\n")
        print(f"sass-report: baseline written to {args.update_baseline}", file=sys.stderr)
        return 0
    if args.check:
        if baseline is None:
            print(f"sass-report: no baseline {args.check}; {refresh_hint(args.check)}", file=sys.stderr)
            return 1
        problems, notes = compare(baseline, report, sources if args.files else None)
        for note in notes:
            print(f"sass-report: note: {note}", file=sys.stderr)
        for problem in problems:
            print(f"sass-report: FAIL: {problem}", file=sys.stderr)
        if problems:
            print(f"sass-report: {len(problems)} problem(s) against {args.check}; {refresh_hint(args.check)}",
                  file=sys.stderr)
            return 1
        print(f"sass-report: {summary['kernels']} kernels match {args.check}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
