"""The contract every kexue operator keeps with torch: for every input layout (contiguous,
channels-last, transposed, stride-0 expanded, offset storage, empty batch) the real and the fake
(meta) kernels agree on outputs' sizes, strides, dtypes and devices, and `torch.library.opcheck`
passes (schema, autograd registration, fake tensors, AOT dispatch with dynamic shapes). The rule:
every output is contiguous, whatever the inputs' layout."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils import _pytree as pytree

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


BAD = [(case, label) for case in CASES for label in case.bad]


def _error(fn):
    try:
        fn()
    except RuntimeError as err:
        return str(err).split("\n")[0]
    return None


def _on_fake_tensors(op, args):
    with FakeTensorMode() as mode:
        return op(*pytree.tree_map_only(torch.Tensor, mode.from_tensor, args))


@pytest.mark.parametrize("case,label", BAD, ids=[f"{c.name}-{label}" for c, label in BAD])
def test_fake_kernel_rejects_what_the_real_kernel_rejects(case, label):
    args = case.bad[label](case.build(2, "cpu", torch.float32))
    real = _error(lambda: case.op(*args))
    assert real is not None, f"{case.name}: the real kernel accepts {label}"
    fake = _error(lambda: _on_fake_tensors(case.op, args))
    assert fake == real, f"{case.name}, {label}: fake says {fake!r}, real says {real!r}"


def test_every_op_has_bad_inputs():
    assert [c.name for c in CASES if not c.bad] == []
