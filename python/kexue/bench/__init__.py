"""Microbenchmarks: ``kexue bench [op]`` or ``python -m kexue.cli bench``."""
from kexue.bench import attention, capsules, diffusion, flows, iresnet, spectral_norm
from kexue.bench.harness import Case, format_table, machine_info, run_cases, write_json

# op family -> function(device) returning its cases
SUITES = {
    "coupling": lambda device: [c for c in flows.cases(device) if c.op == "coupling"],
    "actnorm": lambda device: [c for c in flows.cases(device) if c.op == "actnorm"],
    "flow-models": lambda device: _flow_models().cases(device),
    "spectral-norm": spectral_norm.cases,
    "iresnet": iresnet.cases,
    "capsules": capsules.cases,
    "diffusion": diffusion.cases,
    "attention": attention.cases,
}


def _flow_models():
    from kexue.bench import flow_models  # imports the models (and the digits data) lazily

    return flow_models


__all__ = ["Case", "SUITES", "format_table", "machine_info", "run_cases", "write_json"]
