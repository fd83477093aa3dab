"""The fuzz suite (tests/fuzz_ops.py) in a subprocess per backend: a crash of the process fails
the test and names the case that ran last, instead of killing the test runner."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HAS_SIMT

FUZZ = Path(__file__).with_name("fuzz_ops.py")


@pytest.mark.parametrize("backend", ["cpu", pytest.param("simt", marks=[
    pytest.mark.simt, pytest.mark.skipif(not HAS_SIMT, reason="this build has no SIMT emulator")])])
def test_fuzz_every_op(backend):
    res = subprocess.run([sys.executable, str(FUZZ), "--examples", "500", "--backend", backend],
                         capture_output=True, text=True, timeout=600)
    last = [line for line in res.stdout.splitlines() if line.strip()][-1:] or ["(nothing ran)"]
    assert res.returncode == 0, (f"exit {res.returncode} after the case: {last[0]}\n"
                                 f"{res.stdout[-1500:]}\n{res.stderr[-3000:]}")
    assert res.stdout.rstrip().endswith("fuzz: ok")
