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


def low_precision_ok(ours, ref_low, ref_hi, atol=1e-3):
    """The flash-attention rule: our low-precision result is no further from the fp32/fp64 truth
    than twice the error of the reference evaluated in the same low precision (plus a floor)."""
    ours, ref_low, ref_hi = (t.double() for t in (ours, ref_low, ref_hi))
    err_ours = (ours - ref_hi).abs().max().item()
    err_ref = (ref_low - ref_hi).abs().max().item()
    return err_ours <= 2 * err_ref + atol, (err_ours, err_ref)
