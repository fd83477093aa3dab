"""Packaging: build a wheel, install it into a fresh virtual environment, run an op from it.
Catches what an editable install hides (files missing from the wheel, a bad rpath)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, **kw):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.mark.slow
def test_wheel_installs_and_runs(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", dist, ROOT])
    wheel = next(dist.glob("kexue-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv])
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The fresh venv must see this torch (it may live in our venv rather than the system), and
    # only through a plain path entry: our editable install's hook files are not processed there.
    torch_parent = Path(torch.__file__).resolve().parents[1]
    (site / "torch_path.pth").write_text(f"{torch_parent}\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel])

    check = textwrap.dedent(
        f"""
        import kexue, torch
        assert kexue.__file__.startswith({str(venv)!r}), kexue.__file__
        assert kexue._C.__file__.startswith({str(venv)!r}), kexue._C.__file__
        x = torch.randn(4, 6); s = torch.randn(4, 6); t = torch.randn(4, 6)
        y, ld = kexue.ops.coupling(x, s, t)
        yr, ldr = kexue.ops.reference_coupling(x, s, t)
        torch.testing.assert_close(y, yr); torch.testing.assert_close(ld, ldr)
        print("ok", kexue.build_info()["version"])
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = _run([py, "-c", check], cwd=tmp_path, env=env)
    assert res.stdout.startswith("ok")
    # the console script is installed too
    res = _run([venv / "bin" / "kexue", "--help"], cwd=tmp_path, env=env)
    assert "demo" in res.stdout and "bench" in res.stdout
