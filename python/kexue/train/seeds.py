"""Seeds derived from names and numbers, stable across runs, machines and Python versions."""
from __future__ import annotations

import hashlib
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from a tuple of ints/strings (stable across runs, machines and Python
    versions, unlike ``hash``)."""
    digest = hashlib.sha256(("kexue.train:" + repr(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


__all__ = ["derive_seed"]
