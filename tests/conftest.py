import pytest
import torch

import kexue

HAS_CUDA = torch.cuda.is_available() and kexue.build_info()["cuda"]
HAS_SIMT = kexue.build_info()["simt"]

# Every op test runs on the CPU; on the SIMT emulator (the CUDA kernels run on the CPU, for CPU
# tensors) when this build has it; and on CUDA when this build and machine have it.
DEVICES = [
    "cpu",
    pytest.param(
        "simt",
        marks=[pytest.mark.simt, pytest.mark.skipif(not HAS_SIMT, reason="this build has no SIMT emulator")],
    ),
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")],
    ),
]


def _torch_device(name):
    """The torch device a test allocates on: the emulator runs on CPU tensors."""
    return "cpu" if name == "simt" else name


@pytest.fixture(params=DEVICES)
def device(request):
    """The torch device for the test's tensors: 'cpu' for the CPU kernels and for the emulator
    (which then serves CPU tensors, with poisoned allocations), or 'cuda'."""
    if request.param == "simt":
        kexue._C.set_cpu_backend("simt")
        try:
            yield "cpu"
        finally:
            kexue._C.set_cpu_backend("cpu")
    else:
        yield request.param


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
