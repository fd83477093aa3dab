"""Microbenchmarks: ``kexue bench [op]`` or ``python -m kexue.cli bench``."""
from kexue.bench import flows
from kexue.bench.harness import Case, format_table, machine_info, run_cases, write_json

# op family -> function(device) returning its cases
SUITES = {
    "coupling": lambda device: [c for c in flows.cases(device) if c.op == "coupling"],
    "actnorm": lambda device: [c for c in flows.cases(device) if c.op == "actnorm"],
}

__all__ = ["Case", "SUITES", "format_table", "machine_info", "run_cases", "write_json"]
