"""Fused operators. Each submodule holds one op family: the public function, its fake (meta)
kernel, its autograd formula, and a pure-PyTorch ``reference_*`` version of the same math."""
from kexue.ops.actnorm import actnorm, reference_actnorm
from kexue.ops.coupling import coupling, reference_coupling
from kexue.ops.spectral_norm import (
    reference_spectral_norm_power_iteration,
    reference_spectral_norm_power_iteration_grouped,
    reference_spectral_normalize,
    reference_spectral_normalize_weight,
    spectral_norm_power_iteration,
    spectral_norm_power_iteration_grouped,
    spectral_normalize,
    spectral_normalize_weight,
)

__all__ = ["coupling", "reference_coupling", "actnorm", "reference_actnorm"]
__all__ += [
    "spectral_norm_power_iteration",
    "spectral_norm_power_iteration_grouped",
    "spectral_normalize",
    "spectral_normalize_weight",
    "reference_spectral_norm_power_iteration",
    "reference_spectral_norm_power_iteration_grouped",
    "reference_spectral_normalize",
    "reference_spectral_normalize_weight",
]

from kexue.ops.iresnet import (  # noqa: E402
    iresnet_mlp_logdet,
    logdet_power_series,
    reference_iresnet_mlp_logdet,
    reference_logdet_power_series,
)

__all__ += ["logdet_power_series", "iresnet_mlp_logdet", "reference_logdet_power_series",
            "reference_iresnet_mlp_logdet"]

from kexue.ops.capsules import dynamic_routing, reference_dynamic_routing  # noqa: E402

__all__ += ["dynamic_routing", "reference_dynamic_routing"]

from kexue.ops.em_routing import em_routing, reference_em_routing  # noqa: E402

__all__ += ["em_routing", "reference_em_routing"]

from kexue.ops.diffusion import (  # noqa: E402
    ddim_step,
    ddpm_step,
    ode_euler_step,
    ode_heun_step,
    q_sample,
    reference_ddim_step,
    reference_ddpm_step,
    reference_ode_euler_step,
    reference_ode_heun_step,
    reference_q_sample,
)

__all__ += ["q_sample", "ddpm_step", "ddim_step", "ode_euler_step", "ode_heun_step", "reference_q_sample",
            "reference_ddpm_step", "reference_ddim_step", "reference_ode_euler_step", "reference_ode_heun_step"]

from kexue.ops.attention import (  # noqa: E402
    apply_rope,
    attention_mask,
    reference_apply_rope,
    reference_rope_attention,
    rope_attention,
)

__all__ += ["rope_attention", "apply_rope", "attention_mask", "reference_rope_attention", "reference_apply_rope"]
