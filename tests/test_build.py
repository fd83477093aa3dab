"""The compiled library: build info, and the errors a user sees when it is missing or stale."""
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest
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


def _isa_objects():
    root = pathlib.Path(__file__).resolve().parents[1] / "build"
    return sorted(root.glob("*/CMakeFiles/kexue_cpu_*.dir/csrc/cpu/isa/*.o"))


@pytest.mark.skipif(not _isa_objects() or shutil.which("nm") is None,
                    reason="no per-ISA object files from a local build, or no nm")
def test_isa_builds_keep_their_own_code():
    # Templates instantiated in several per-ISA builds become weak symbols that the linker folds
    # into one build's code: the AVX-512 loops would then run the base code (or the reverse, and
    # crash on a CPU without AVX-512). Every function of those builds must be local.
    shared = []
    for obj in _isa_objects():
        out = subprocess.run(["nm", "-C", str(obj)], capture_output=True, text=True, check=True).stdout
        shared += [f"{obj.name} ({obj.parents[3].name}): {line}" for line in out.splitlines()
                   if len(line.split()) > 2 and line.split()[1] in ("W", "V", "u")]
    assert not shared, "\n".join(shared[:20])
