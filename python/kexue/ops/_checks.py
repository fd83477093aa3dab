"""The argument checks of the fake (meta) kernels: the conditions and the messages of the C++ glue
(csrc/ops/common.h and each op's checks), so that a bad input fails at trace time, under
torch.compile or fake tensors, exactly as it fails at run time. Conditions go through
torch._check, so symbolic shapes are checked (and guarded) too. tests/test_op_contract.py holds
each op's fake and real kernels to the same message for its bad inputs."""
from __future__ import annotations

import math

import torch

from kexue import _C

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# c10's ScalarType names, as the C++ messages print them
_C_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
            torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
            torch.bool: "Bool", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble"}


def dtype_name(dtype: torch.dtype) -> str:
    return _C_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def sizes(t) -> str:
    """A shape as c10 prints an IntArrayRef: [3, 4]."""
    return "[" + ", ".join(str(s) for s in (t.shape if isinstance(t, torch.Tensor) else t)) + "]"


def num(x: float) -> str:
    """A double as a C++ stream prints it (6 significant digits, %g)."""
    return "%g" % x


def finite(x) -> bool:
    """math.isfinite for plain and symbolic floats (torch.compile may trace scalars symbolically)."""
    return x == x and x != math.inf and x != -math.inf


def check(cond, op: str, *parts) -> None:
    torch._check(cond, lambda: op + ": " + "".join(str(p) for p in parts))


def on_cuda_kernels(t: torch.Tensor) -> bool:
    """Whether the CUDA kernels serve t: on CUDA, or on the CPU through the emulator (the glue's
    gpu_launchers())."""
    return t.device.type == "cuda" or (t.device.type == "cpu" and _C.cpu_backend() == "simt")


def fail(op: str, *parts) -> None:
    check(False, op, *parts)


def float_dtype(t: torch.Tensor, op: str, arg: str) -> None:
    check(t.dtype in FLOATS, op, arg, " must be float32, float64, float16 or bfloat16, got ", dtype_name(t.dtype))


def device_supported(t: torch.Tensor, op: str) -> None:
    # Meta tensors are what fake tensors and shape propagation run on: only the real kernels refuse them.
    if t.device.type == "meta":
        return
    if _C.build_info()["cuda"]:
        check(t.device.type in ("cpu", "cuda"), op, "tensors must be on CPU or CUDA, got ", t.device)
    else:
        check(t.device.type == "cpu", op, "this kexue build has no CUDA kernels; tensors must be on CPU, got ",
              t.device, ". Rebuild kexue with a CUDA torch and nvcc to use the GPU.")


def like(ref: torch.Tensor, ref_name: str, t: torch.Tensor, op: str, arg: str, same_dtype: bool = True) -> None:
    check(t.device == ref.device, op, arg, " must be on ", ref.device, " like ", ref_name, ", got ", t.device)
    if same_dtype:
        check(t.dtype == ref.dtype, op, arg, " must have dtype ", dtype_name(ref.dtype), " like ", ref_name, ", got ",
              dtype_name(t.dtype))


def same_shape(ref: torch.Tensor, ref_name: str, t: torch.Tensor, op: str, arg: str) -> None:
    check(t.shape == ref.shape, op, arg, " must have the shape of ", ref_name, " ", sizes(ref), ", got ", sizes(t))


def on_device(t: torch.Tensor, ref: torch.Tensor, op: str, arg: str, ref_name: str = "", got: bool = True) -> None:
    """`arg must be on <device>[ like ref][, got <device>]`, the other device message of the glue."""
    check(t.device == ref.device, op, arg, " must be on ", ref.device, (" like " + ref_name) if ref_name else "",
          (", got " + str(t.device)) if got else "")


def output_and_logdet_grads(x, grad_out, grad_logdet, op: str) -> None:
    """The flow backward ops' checks of (grad_out, grad_logdet) against x."""
    like(x, "x", grad_out, op, "grad_out")
    same_shape(x, "x", grad_out, op, "grad_out")
    check(grad_logdet.dim() == 1 and grad_logdet.shape[0] == x.shape[0], op, "grad_logdet must have shape [",
          x.shape[0], "], got ", sizes(grad_logdet))
    check(grad_logdet.device == x.device, op, "grad_logdet must be on ", x.device)
