"""The contract every kexue operator keeps with torch: for every input layout (contiguous,
channels-last, transposed, stride-0 expanded, offset storage, empty batch) the real and the fake
(meta) kernels agree on outputs' sizes, strides, dtypes and devices, and `torch.library.opcheck`
passes (schema, autograd registration, fake tensors, AOT dispatch with dynamic shapes). The rule:
every output is contiguous, whatever the inputs' layout."""
import pytest
import torch

from op_cases import CASES, LAYOUTS, with_layout

CASE_IDS = [c.name for c in CASES]


def _outputs(result):
    return [r for r in (result if isinstance(result, (tuple, list)) else [result]) if isinstance(r, torch.Tensor)]


@pytest.mark.parametrize("layout", list(LAYOUTS) + ["empty_batch"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_opcheck_every_layout(device, case, layout):
    for dtype in case.dtypes:
        batch = 0 if layout == "empty_batch" else 2
        args = case.build(batch, device, dtype)
        if layout != "empty_batch":
            args = with_layout(args, layout, case.mutated)
        torch.library.opcheck(case.op, tuple(args))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_outputs_are_contiguous(device, case):
    for layout in LAYOUTS:
        args = with_layout(case.build(2, device, case.dtypes[0]), layout, case.mutated)
        for i, out in enumerate(_outputs(case.op(*args))):
            assert out.is_contiguous(), f"{case.name}, {layout} inputs: output {i} has strides {out.stride()}"
