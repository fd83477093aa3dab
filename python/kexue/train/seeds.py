"""Seeds derived from names and numbers, stable across runs, machines and Python versions, and
the devices a forked RNG covers."""
from __future__ import annotations

import hashlib
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from a tuple of ints/strings (stable across runs, machines and Python
    versions, unlike ``hash``)."""
    digest = hashlib.sha256(("kexue.train:" + repr(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def fork_devices(device) -> list:
    """The devices whose RNG ``torch.random.fork_rng`` must save for work on ``device``."""
    return [device] if device.type == "cuda" else []


__all__ = ["derive_seed", "fork_devices"]
