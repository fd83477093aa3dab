import contextlib
import zlib

import pytest
import torch

import kexue

HAS_CUDA = torch.cuda.is_available() and kexue.build_info()["cuda"]
HAS_SIMT = kexue.build_info()["simt"]

# Every op test runs on the CPU; on the SIMT emulator (the CUDA kernels run on the CPU, for CPU
# tensors) when this build has it; and on CUDA when this build and machine have it.
SIMT = pytest.param(
    "simt", marks=[pytest.mark.simt, pytest.mark.skipif(not HAS_SIMT, reason="this build has no SIMT emulator")])
CUDA = pytest.param(
    "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")])
DEVICES = ["cpu", SIMT, CUDA]


@contextlib.contextmanager
def on_backend(name, seed=0):
    """Run CPU tensors through the emulator (name "simt", threads within a block in a shuffled
    order: a result that depends on the order is a race) or leave the backend alone; yields the
    torch device the tensors live on."""
    if name != "simt":
        yield name
        return
    kexue._C.set_cpu_backend("simt")
    kexue._C.simt_configure("shuffle", seed)
    try:
        yield "cpu"
    finally:
        kexue._C.simt_configure("forward", 0)
        kexue._C.set_cpu_backend("cpu")


def _seed_of(request):
    return zlib.crc32(request.node.nodeid.encode())


@pytest.fixture(params=DEVICES)
def device(request):
    """The torch device for the test's tensors: 'cpu' for the CPU kernels and for the emulator
    (which then serves CPU tensors, with poisoned allocations), or 'cuda'."""
    with on_backend(request.param, _seed_of(request)) as dev:
        yield dev


@pytest.fixture(params=[SIMT, CUDA])
def gpu(request):
    """Like ``device``, for tests of GPU-only code paths (tensor cores, PTX instructions): the
    emulator or a real GPU."""
    with on_backend(request.param, _seed_of(request)) as dev:
        yield dev


def pytest_collection_modifyitems(config, items):
    # Tests that look back on the whole run (which kernels the emulator launched) go last.
    last = [item for item in items if item.get_closest_marker("runs_last")]
    items[:] = [item for item in items if not item.get_closest_marker("runs_last")] + last


def whole_suite(config):
    """Whether this run is the whole default test selection (no paths, -k or -m given)."""
    source = getattr(config, "args_source", None)
    return (source == pytest.Config.ArgsSource.TESTPATHS and not config.option.keyword
            and not config.option.markexpr)


@pytest.fixture
def restore_cpu_isa():
    """Tests that switch the CPU kernels' instruction set put it back afterwards."""
    before = kexue.build_info()["cpu_isa"]
    yield
    kexue._C.set_cpu_isa(before)


def low_precision_ok(ours, ref_low, ref_hi, atol=1e-3, rtol=1e-6):
    """The flash-attention rule: our low-precision result is no further from the fp64 truth than
    twice the error of the reference evaluated in the same low precision, plus a floor of
    atol + rtol·max|truth| (large sums in fp32 carry ~1e-7 relative error whoever computes them)."""
    ours, ref_low, ref_hi = (t.double() for t in (ours, ref_low, ref_hi))
    err_ours = (ours - ref_hi).abs().max().item()
    err_ref = (ref_low - ref_hi).abs().max().item()
    floor = atol + rtol * (ref_hi.abs().max().item() if ref_hi.numel() else 0.0)
    return err_ours <= 2 * err_ref + floor, (err_ours, err_ref, floor)
