"""Rotary position embedding (RoPE; Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary
Position Embedding") and its context-extension scalings (MODELS.md E1).

RoPE rotates each pair of a query/key vector by the angle m·θ_i, m the position and
θ_i = base^(−2i/d), i = 0 … d/2 − 1, so that ⟨R_m q, R_n k⟩ depends on m − n only.

The β-base reading (post: Transformer升级之路：10、RoPE是一种β进制编码): with β = base^(2/d),
θ_i = β^(−i) and the pair i of position m encodes m/β^i, the i-th "digit" of m written in base β
(cos/sin play the role of the modulo). Extending the context by a factor s means representing
larger numbers with the same digits:

- position interpolation (Chen et al. 2023, "Extending Context Window of Large Language Models via
  Positional Interpolation"): m → m/s, every digit compressed (all frequencies interpolated);
- NTK-aware scaling: enlarge the base, β → β·λ, so that the top digit (lowest frequency,
  i = d/2 − 1) is interpolated by exactly s while the lowest digit (i = 0, highest frequency) is
  unchanged (extrapolated): λ^(d/2−1) = s, i.e. base' = base·s^(d/(d−2));
- dynamic NTK (the transformers library's DynamicNTK rotary embedding): NTK with the factor picked
  from the current length L, s' = max(1, s·L/L0 − (s − 1)), so nothing changes up to the training
  length L0;
- YaRN (Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large Language Models"):
  per-frequency blend between interpolation and extrapolation, ramping between the dimensions that
  make beta_fast and beta_slow full turns within L0, plus an attention temperature
  mscale = 0.1·ln(s) + 1 applied to cos and sin (hence to both q and k: logits scale by mscale²).

``scaling`` takes the transformers library's ``rope_scaling`` dictionaries (key "type" or
"rope_type"). Frequencies are computed in float64 and handed out in float32; cos/sin are computed
from the positions in float32 (float64 on request), never stored as low-precision tables.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from kexue.ops.attention import apply_rope

Tensor = torch.Tensor

LAYOUTS = ("half", "interleaved")

# Keys each scaling type accepts, with their defaults (None = required or optional without default).
_SCALING_KEYS: Dict[str, Dict[str, Any]] = {
    "linear": {"factor": None},
    "ntk": {"factor": None},
    "dynamic": {"factor": None, "original_max_position_embeddings": None},
    "yarn": {"factor": None, "original_max_position_embeddings": None, "beta_fast": 32.0, "beta_slow": 1.0,
             "attention_factor": None, "truncate": True},
}
_REQUIRED = {"linear": ("factor",), "ntk": ("factor",), "dynamic": ("factor", "original_max_position_embeddings"),
             "yarn": ("factor", "original_max_position_embeddings")}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def ntk_base(base: float, dim: int, factor: float) -> float:
    """NTK-aware base: base·s^(d/(d−2)) interpolates the lowest frequency by s and leaves the
    highest one unchanged (β-base reading, see the module docstring)."""
    return base * factor ** (dim / (dim - 2))


def dynamic_ntk_factor(factor: float, seq_len: Optional[int], original_max_position_embeddings: int) -> float:
    """The transformers library's dynamic NTK factor s' = max(1, s·L/L0 − (s − 1)); s' = 1 when the
    length L is unknown or within the training length L0."""
    if seq_len is None:
        return 1.0
    return max(1.0, factor * seq_len / original_max_position_embeddings - (factor - 1.0))


def yarn_mscale(factor: float) -> float:
    """YaRN's attention temperature: 0.1·ln(s) + 1 (1 when s ≤ 1)."""
    return 1.0 if factor <= 1.0 else 0.1 * math.log(factor) + 1.0


def yarn_correction_dim(num_rotations: float, dim: int, base: float, original_max_position_embeddings: int) -> float:
    """The pair index i whose wavelength 2π·base^(2i/d) fits ``num_rotations`` times into L0:
    i = d·ln(L0 / (2π·r)) / (2·ln base)."""
    return dim * math.log(original_max_position_embeddings / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_ramp(dim: int, base: float, original_max_position_embeddings: int, beta_fast: float, beta_slow: float,
              truncate: bool, device=None) -> Tensor:
    """Interpolation weight γ_i ∈ [0, 1] per pair (float64 [d/2]): 0 for the high frequencies that
    turn more than ``beta_fast`` times within L0 (extrapolated), 1 for the low frequencies turning
    fewer than ``beta_slow`` times (interpolated), linear in i between. ``truncate`` rounds the
    bounds outwards to whole indices, as YaRN's reference code and transformers do."""
    low = yarn_correction_dim(beta_fast, dim, base, original_max_position_embeddings)
    high = yarn_correction_dim(beta_slow, dim, base, original_max_position_embeddings)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:  # a step rather than a ramp; avoid dividing by zero
        high += 0.001
    i = torch.arange(dim // 2, dtype=torch.float64, device=device)
    return ((i - low) / (high - low)).clamp(0.0, 1.0)


def _normalize_scaling(scaling: Optional[Mapping[str, Any]], dim: int) -> Optional[Dict[str, Any]]:
    """Validate a ``rope_scaling`` dict and return it with key "type" and every default filled in
    (None for no scaling)."""
    if scaling is None:
        return None
    if not isinstance(scaling, Mapping):
        raise TypeError(f"RoPE: scaling must be a dict like transformers' rope_scaling or None, "
                        f"got {type(scaling).__name__}")
    spec = dict(scaling)
    kind = spec.pop("type", None)
    alias = spec.pop("rope_type", None)
    if kind is not None and alias is not None and kind != alias:
        raise ValueError(f"RoPE: scaling has type={kind!r} and rope_type={alias!r}; give one")
    kind = kind if kind is not None else alias
    if kind is None:
        raise ValueError("RoPE: scaling needs a 'type' (or 'rope_type'): one of "
                         f"{sorted(_SCALING_KEYS)} or 'default'")
    if kind == "default":
        if spec:
            raise ValueError(f"RoPE: scaling type 'default' takes no parameters, got {sorted(spec)}")
        return None
    if kind not in _SCALING_KEYS:
        raise ValueError(f"RoPE: unknown scaling type {kind!r}; expected one of {sorted(_SCALING_KEYS)} or 'default'")
    allowed = _SCALING_KEYS[kind]
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ValueError(f"RoPE: scaling type {kind!r} does not take {unknown}; it takes {sorted(allowed)}")
    for key in _REQUIRED[kind]:
        if spec.get(key) is None:
            raise ValueError(f"RoPE: scaling type {kind!r} needs {key!r}")
    out: Dict[str, Any] = {"type": kind}
    for key, default in allowed.items():
        value = spec.get(key, default)
        if value is not None or key in spec:
            out[key] = value
    factor = out["factor"]
    if not _is_number(factor) or not math.isfinite(factor) or factor < 1:
        raise ValueError(f"RoPE: scaling factor must be a finite number >= 1, got {factor!r}")
    out["factor"] = float(factor)
    if kind in ("ntk", "dynamic") and dim <= 2:
        raise ValueError(f"RoPE: {kind!r} scaling needs dim > 2 (base·s^(d/(d−2))), got dim={dim}")
    if "original_max_position_embeddings" in out:
        l0 = out["original_max_position_embeddings"]
        if not isinstance(l0, int) or isinstance(l0, bool) or l0 < 1:
            raise ValueError(f"RoPE: original_max_position_embeddings must be a positive int, got {l0!r}")
    if kind == "yarn":
        fast, slow = out["beta_fast"], out["beta_slow"]
        if not (_is_number(fast) and _is_number(slow) and fast > slow > 0):
            raise ValueError(f"RoPE: yarn needs beta_fast > beta_slow > 0, got beta_fast={fast!r}, beta_slow={slow!r}")
        out["beta_fast"], out["beta_slow"] = float(fast), float(slow)
        att = out.get("attention_factor")
        if att is not None:
            if not _is_number(att) or not att > 0:
                raise ValueError(f"RoPE: yarn attention_factor must be a positive number, got {att!r}")
            out["attention_factor"] = float(att)
        if not isinstance(out["truncate"], bool):
            raise TypeError(f"RoPE: yarn truncate must be a bool, got {out['truncate']!r}")
    return out


class RoPE(nn.Module):
    """Rotary position embedding of head dimension ``dim`` (even; the whole head is rotated).

    ``layout="half"`` (GPT-NeoX) pairs x[i] with x[i + d/2]; ``"interleaved"`` (GPT-J, the
    RoFormer paper) pairs x[2i] with x[2i+1]. Rotation:
    (x1, x2) → attention_scaling·(x1·cos − x2·sin, x1·sin + x2·cos), angle m·θ_i.

    ``scaling``: None, or {"type": "linear" | "ntk" | "dynamic" | "yarn", "factor": s, ...}
    (see the module docstring; "dynamic" and "yarn" need "original_max_position_embeddings",
    "yarn" also takes "beta_fast" (32), "beta_slow" (1), "attention_factor" (default mscale) and
    "truncate" (True)). ``seq_len`` arguments only matter for "dynamic".

    No parameters and no buffers: the module carries the configuration (and moves nowhere);
    the tables are computed on the device of the positions at each call.
    """

    def __init__(self, dim: int, base: float = 10000.0, layout: str = "half",
                 scaling: Optional[Mapping[str, Any]] = None):
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise ValueError(f"RoPE: dim must be a positive int, got {dim!r}")
        if dim % 2:
            raise ValueError(f"RoPE: dim must be even (it rotates pairs), got {dim}")
        if not _is_number(base) or not math.isfinite(base) or not base > 1:
            raise ValueError(f"RoPE: base must be a finite number > 1, got {base!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"RoPE: layout must be one of {LAYOUTS}, got {layout!r}")
        self.dim, self.base, self.layout = dim, float(base), layout
        self.scaling = _normalize_scaling(scaling, dim)

    # --- construction from / to plain dicts (model configs) -----------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RoPE":
        """Build from {"dim": d, "base": b, "layout": ..., "rope_scaling": {...}} ("scaling" is
        accepted for "rope_scaling"); only "dim" is required."""
        if not isinstance(config, Mapping):
            raise TypeError(f"RoPE.from_config: expected a dict, got {type(config).__name__}")
        cfg = dict(config)
        if "rope_scaling" in cfg and "scaling" in cfg:
            raise ValueError("RoPE.from_config: give either 'rope_scaling' or 'scaling', not both")
        scaling = cfg.pop("rope_scaling", cfg.pop("scaling", None))
        unknown = sorted(set(cfg) - {"dim", "base", "layout"})
        if unknown:
            raise ValueError(f"RoPE.from_config: unknown keys {unknown}; expected dim, base, layout, rope_scaling")
        if "dim" not in cfg:
            raise ValueError("RoPE.from_config: 'dim' is required")
        return cls(cfg["dim"], cfg.get("base", 10000.0), cfg.get("layout", "half"), scaling)

    def config(self) -> Dict[str, Any]:
        """The dict ``from_config`` takes back (scaling with every default filled in)."""
        return {"dim": self.dim, "base": self.base, "layout": self.layout,
                "rope_scaling": None if self.scaling is None else dict(self.scaling)}

    # --- the tables ---------------------------------------------------------------------------

    @property
    def interleaved(self) -> bool:
        return self.layout == "interleaved"

    def inv_freq(self, seq_len: Optional[int] = None, device=None) -> Tensor:
        """θ_i (float32 [d/2]) after scaling; ``seq_len`` (current length) only for "dynamic"."""
        return self._inv_freq64(seq_len, device).to(torch.float32)

    def _inv_freq64(self, seq_len: Optional[int], device) -> Tensor:
        if seq_len is not None and (not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 0):
            raise ValueError(f"RoPE: seq_len must be a non-negative int or None, got {seq_len!r}")
        d, base, sc = self.dim, self.base, self.scaling
        kind = None if sc is None else sc["type"]
        if kind == "ntk":
            base = ntk_base(base, d, sc["factor"])
        elif kind == "dynamic":
            base = ntk_base(base, d, dynamic_ntk_factor(sc["factor"], seq_len, sc["original_max_position_embeddings"]))
        theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
        if kind == "linear":
            return theta / sc["factor"]
        if kind == "yarn":
            ramp = yarn_ramp(d, base, sc["original_max_position_embeddings"], sc["beta_fast"], sc["beta_slow"],
                             sc["truncate"], device)
            return theta / sc["factor"] * ramp + theta * (1 - ramp)
        return theta

    def attention_scaling(self, seq_len: Optional[int] = None) -> float:
        """The factor cos and sin are multiplied by: YaRN's ``attention_factor`` (default
        mscale = 0.1·ln(s) + 1), 1 for every other scaling."""
        sc = self.scaling
        if sc is None or sc["type"] != "yarn":
            return 1.0
        att = sc.get("attention_factor")
        return yarn_mscale(sc["factor"]) if att is None else att

    def cos_sin(self, positions: Tensor, seq_len: Optional[int] = None,
                dtype: torch.dtype = torch.float32) -> Tuple[Tensor, Tensor]:
        """(cos, sin) of the angles positions·θ_i, times ``attention_scaling``: shape
        positions.shape + [d/2], in float32 (or float64 with ``dtype=torch.float64``)."""
        if not isinstance(positions, Tensor):
            raise TypeError(f"RoPE.cos_sin: positions must be a tensor, got {type(positions).__name__}")
        if positions.dtype == torch.bool or positions.is_complex():
            raise TypeError(f"RoPE.cos_sin: positions must be integer or real, got {positions.dtype}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"RoPE.cos_sin: dtype must be torch.float32 or torch.float64, got {dtype}")
        inv_freq = self.inv_freq(seq_len, positions.device).to(dtype)
        angles = positions.to(dtype).unsqueeze(-1) * inv_freq
        mscale = self.attention_scaling(seq_len)
        cos, sin = angles.cos(), angles.sin()
        if mscale != 1.0:
            cos, sin = cos * mscale, sin * mscale
        return cos, sin

    def kernel_args(self, seq_len: Optional[int] = None, device=None) -> Tuple[Tensor, float, bool]:
        """What the fused attention kernel takes: (inv_freq float32 [d/2], attention_scaling,
        interleaved)."""
        return self.inv_freq(seq_len, device), self.attention_scaling(seq_len), self.interleaved

    def forward(self, x: Tensor, positions: Optional[Tensor] = None, seq_len: Optional[int] = None) -> Tensor:
        """Rotate x [..., L, d] (``kexue.ops.apply_rope``)."""
        return apply_rope(x, positions, self, seq_len=seq_len)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base:g}, layout={self.layout!r}, scaling={self.scaling}"
