"""Helpers shared by tools/gpu_check.py (its ``sass`` stage on the GPU machine) and
tools/sass_report.py (the static report without a GPU): finding the CUDA tools, parsing
``cuobjdump -res-usage`` and turning mangled kernel names into short readable signatures.

Standard library only, Python 3.9+.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import site
import subprocess
import sys
from typing import Callable, List, Optional, Sequence, Tuple


def find_tool(name: str) -> Optional[str]:
    """A CUDA tool on PATH, else where the CUDA toolkit puts it."""
    for path in (shutil.which(name), f"/usr/local/cuda/bin/{name}", f"/usr/local/cuda/{name}/{name}"):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def site_packages_dirs() -> List[str]:
    """The running Python's site-packages directories (a venv's own and, with
    --system-site-packages, the system's), in sys.path order."""
    dirs = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    try:
        dirs += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # some embedded or old virtualenv interpreters lack these
        pass
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


def find_cuda_binary(name: str) -> Optional[str]:
    """A CUDA tool on PATH, else in nvidia/cu*/bin of a site-packages directory (where the pip
    packages nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm put theirs; the newest cuXX first),
    else in the CUDA toolkit's directories."""
    found = shutil.which(name)
    if found:
        return found
    for directory in site_packages_dirs():
        for path in sorted(glob.glob(os.path.join(directory, "nvidia", "cu*", "bin", name)), reverse=True):
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return find_tool(name)


def parse_res_usage(text: str) -> List[dict]:
    """Rows {arch, name, REG, STACK, SHARED, LOCAL} of ``cuobjdump -res-usage`` output."""
    rows, arch, function = [], "?", None
    for line in text.splitlines():
        match = re.match(r"\s*arch = (\S+)", line)
        if match:
            arch = match.group(1)
            continue
        match = re.match(r"\s*Function (\S+):\s*$", line)
        if match:
            function = match.group(1)
            continue
        if function and "REG:" in line:
            values = dict(re.findall(r"(\w+):(\d+)", line))
            rows.append({"arch": arch, "name": function,
                         **{k: int(values.get(k, 0)) for k in ("REG", "STACK", "SHARED", "LOCAL")}})
            function = None
    return rows


def short_signature(name: str) -> str:
    """A demangled kernel name without its void return type, the anonymous namespace and the
    parameter list."""
    name = name.replace("(anonymous namespace)::", "")
    name = name[len("void "):] if name.startswith("void ") else name
    if not name.endswith(")"):
        return name
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(name[i], 0)
        if depth == 0:
            return name[:i]
    return name


def _run_captured(cmd: Sequence[str]) -> Tuple[int, str]:
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        return 1, str(err)
    return res.returncode, res.stdout


def demangle(names: List[str], run: Callable[[Sequence[str]], Tuple[int, str]] = _run_captured) -> List[str]:
    """Short signatures of mangled names through c++filt; the names unchanged when c++filt is
    missing or fails. ``run(cmd) -> (exit status, output)`` runs the command (a caller may log it)."""
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None or not names:
        return list(names)
    rc, output = run([cxxfilt, *names])
    out = output.splitlines()
    return [short_signature(n) for n in out] if rc == 0 and len(out) == len(names) else list(names)
