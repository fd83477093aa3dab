import pytest
import torch

import kexue

HAS_CUDA = torch.cuda.is_available() and kexue.build_info()["cuda"]

# Every op test runs on the CPU, and on CUDA when this build and machine have it.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


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
