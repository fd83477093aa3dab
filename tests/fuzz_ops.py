"""Fuzzing every kexue op (tests/test_fuzz.py runs this file in a subprocess, so that a crash of
the process is a test failure naming the case rather than a dead test runner).

Each example draws an op, a batch size (0 to 3), an input layout, a dtype (valid or not) and
at most one hostile change: a known bad input, or a scalar argument replaced by NaN, ±inf, 0, -1
or a huge value. Every call must either return or raise RuntimeError, ValueError or TypeError (an
IndexError or any other exception is an unclear message; a signal is a crash). A NaN or infinite
scalar must be refused. A valid call must give the same bits whatever the inputs' layout.

Usage: python tests/fuzz_ops.py [--examples N] [--seed S] [--backend cpu|simt]
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kexue  # noqa: E402
from op_cases import CASES, LAYOUTS, with_layout  # noqa: E402

CLEAR_ERRORS = (RuntimeError, ValueError, TypeError)
HOSTILE_FLOATS = (math.nan, math.inf, -math.inf, 0.0, -1.0, 1e300)
HOSTILE_INTS = (0, -1, 2**40)
WRONG_DTYPES = (torch.int64, torch.bool, torch.complex64)


def _tensors(out):
    return [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]


def _map_tensors(a, fn):
    if isinstance(a, torch.Tensor):
        return fn(a)
    if isinstance(a, list) and a and isinstance(a[0], torch.Tensor):
        return [fn(t) for t in a]
    return a


def _scalar_positions(args):
    return [i for i, a in enumerate(args) if isinstance(a, (int, float)) and not isinstance(a, bool)]


def _hostile_scalar(args, i, draw):
    value = draw(st.sampled_from(HOSTILE_FLOATS if isinstance(args[i], float) else HOSTILE_INTS))
    return args[:i] + [value] + args[i + 1:], value


@st.composite
def fuzz_case(draw):
    case = draw(st.sampled_from(CASES))
    batch = draw(st.integers(0, 3))
    layout = draw(st.sampled_from(sorted(LAYOUTS)))
    dtype = draw(st.sampled_from(list(case.dtypes) + list(WRONG_DTYPES)))
    change = draw(st.sampled_from(["none", "bad", "scalar"]))
    return case, batch, layout, dtype, change, draw


def _build(case, batch, dtype):
    """The case's arguments; a dtype the op does not take is applied to its floating tensors."""
    if dtype in case.dtypes:
        return case.build(batch, "cpu", dtype)
    args = case.build(batch, "cpu", case.dtypes[0])
    cast = lambda t: t.detach().to(dtype) if isinstance(t, torch.Tensor) and t.dtype.is_floating_point else t
    return [[cast(t) for t in a] if isinstance(a, list) else cast(a) for a in args]


def _call(op, args):
    try:
        return op(*args), None
    except CLEAR_ERRORS as err:
        return None, err


def run_one(case, batch, layout, dtype, change, draw):
    args = _build(case, batch, dtype)
    label = "valid"
    must_refuse = dtype not in case.dtypes
    if change == "bad" and case.bad and batch == 2 and dtype == torch.float32:
        name = draw(st.sampled_from(sorted(case.bad)))
        args, label, must_refuse = case.bad[name](args), f"bad: {name}", True
    elif change == "scalar" and _scalar_positions(args):
        i = draw(st.sampled_from(_scalar_positions(args)))
        args, value = _hostile_scalar(args, i, draw)
        label = f"arg {i} = {value!r}"
        must_refuse = must_refuse or (isinstance(value, float) and not math.isfinite(value))
    args = with_layout(args, layout, case.mutated)
    # the same values, contiguous: taken before the call, which may update in-place arguments
    contiguous = [_map_tensors(a, lambda t: t.detach().clone(memory_format=torch.contiguous_format)) for a in args]
    print(f"{case.name} batch={batch} layout={layout} dtype={dtype} {label}", flush=True)
    out, err = _call(case.op, args)
    if must_refuse:
        assert err is not None, f"{case.name}: accepted {label} (dtype {dtype})"
        return
    if label != "valid" or err is not None:
        return  # a hostile value the op may take (0, -1, huge) or a clear refusal
    again, err2 = _call(case.op, contiguous)
    assert err2 is None, f"{case.name}: contiguous inputs refused where {layout} ones were taken: {err2}"
    for x, y in zip(_tensors(out), _tensors(again)):
        assert x.shape == y.shape and x.dtype == y.dtype and x.is_contiguous(), case.name
        assert torch.equal(x.nan_to_num(), y.nan_to_num()), f"{case.name}: {layout} inputs change the result"


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("cpu", "simt"), default="cpu")
    opts = parser.parse_args(argv)
    if opts.backend == "simt":
        kexue._C.set_cpu_backend("simt")

    @settings(max_examples=opts.examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(fuzz_case(), st.data())
    def fuzz(drawn, data):
        case, batch, layout, dtype, change, _ = drawn
        run_one(case, batch, layout, dtype, change, data.draw)

    torch.manual_seed(opts.seed)
    fuzz()
    print("fuzz: ok", flush=True)


if __name__ == "__main__":
    main()
