"""The compiled library: build info, and the errors a user sees when it is missing or stale."""
import subprocess
import sys
import textwrap

import torch

import kexue


def test_build_info():
    info = kexue.build_info()
    assert info["version"] == kexue.__version__
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["cuda_archs"], list)
    if info["cuda"]:
        assert info["cuda_archs"], "a CUDA build names its architectures"


def test_ops_registered():
    for name in ("coupling", "coupling_backward", "actnorm", "actnorm_backward"):
        assert hasattr(torch.ops.kexue, name)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)


def test_missing_library_says_how_to_build():
    res = _run(
        """
        import sys, importlib.abc
        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "kexue._C":
                    raise ImportError("No module named 'kexue._C'")
        sys.meta_path.insert(0, Hide())
        import kexue
        """
    )
    assert res.returncode != 0
    assert "kexue._C is not available" in res.stderr
    assert "pip install --no-build-isolation" in res.stderr


def test_other_torch_version_is_refused():
    res = _run(
        """
        import torch
        torch.__version__ = "1.0.0"
        import kexue
        """
    )
    assert res.returncode != 0
    assert "built against torch" in res.stderr and "1.0.0" in res.stderr
