"""Fused operators. Each submodule holds one op family: the public function, its fake (meta)
kernel, its autograd formula, and a pure-PyTorch ``reference_*`` version of the same math."""
from kexue.ops.actnorm import actnorm, reference_actnorm
from kexue.ops.coupling import coupling, reference_coupling

__all__ = ["coupling", "reference_coupling", "actnorm", "reference_actnorm"]
