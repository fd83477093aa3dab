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
  mscale = 0.1·ln(s) + 1 applied to cos and sin (hence to both q and k: logits scale by mscale²);
- Llama 3 (Meta's Llama 3.1 recipe, transformers' "llama3"): the same blend ramped by the number of
  turns r_i = L0·θ_i/(2π) = L0/λ_i a pair makes within L0 (λ_i its wavelength): pairs with
  r_i ≥ high_freq_factor are kept, pairs with r_i ≤ low_freq_factor are interpolated (θ_i/s), and
  between θ_i' = (1 − γ)·θ_i/s + γ·θ_i with γ = (r_i − low_freq_factor)/(high_freq_factor −
  low_freq_factor); no temperature;
- LongRoPE (Ding et al. 2024, "LongRoPE: Extending LLM Context Window Beyond 2 Million Tokens";
  Phi-3, transformers' "longrope"): searched per-pair rescale factors, θ_i' = θ_i/λ_i with λ =
  ``short_factor`` while the current length L ≤ L0 and ``long_factor`` beyond, plus the attention
  temperature sqrt(1 + ln(s)/ln(L0)) (s = max_position_embeddings/L0, transformers' ``factor``),
  applied at every length like YaRN's.

The current length of "dynamic" and "longrope" is ``seq_len`` when given, else max(positions) + 1
when positions are given (as the transformers library reads it from ``position_ids``: a decoding
step at position 5000 is at length 5001), else the length L of the rotated tensor.

``scaling`` takes the transformers library's ``rope_scaling`` dictionaries (key "type" or
"rope_type"). Frequencies are computed in float64 and handed out in float32; cos/sin are computed
from the positions in float32 (float64 on request), never stored as low-precision tables.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from kexue.ops.attention import _length_of_positions, apply_rope

Tensor = torch.Tensor

LAYOUTS = ("half", "interleaved")

# Keys each scaling type accepts, with their defaults (None = required or optional without default).
_SCALING_KEYS: Dict[str, Dict[str, Any]] = {
    "linear": {"factor": None},
    "ntk": {"factor": None},
    "dynamic": {"factor": None, "original_max_position_embeddings": None},
    "yarn": {"factor": None, "original_max_position_embeddings": None, "beta_fast": 32.0, "beta_slow": 1.0,
             "attention_factor": None, "truncate": True},
    "llama3": {"factor": None, "original_max_position_embeddings": None, "low_freq_factor": None,
               "high_freq_factor": None},
    "longrope": {"short_factor": None, "long_factor": None, "original_max_position_embeddings": None, "factor": None,
                 "attention_factor": None},
}
_REQUIRED = {"linear": ("factor",), "ntk": ("factor",), "dynamic": ("factor", "original_max_position_embeddings"),
             "yarn": ("factor", "original_max_position_embeddings"),
             # transformers requires all four too (no defaults; Meta's Llama 3.1: 8, 8192, 1, 4)
             "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
             # "factor" or "attention_factor" too, checked in _normalize_scaling
             "longrope": ("short_factor", "long_factor", "original_max_position_embeddings")}
# The scalings whose frequencies depend on the current length.
_LENGTH_DEPENDENT = ("dynamic", "longrope")


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


def longrope_attention_factor(factor: float, original_max_position_embeddings: int) -> float:
    """LongRoPE's attention temperature sqrt(1 + ln(s)/ln(L0)) (1 when s ≤ 1), s the context
    extension max_position_embeddings/L0."""
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1.0 + math.log(factor) / math.log(original_max_position_embeddings))


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


def _factor_list(kind: str, key: str, value, dim: int) -> Tuple[float, ...]:
    """A per-pair factor list of longrope: dim/2 positive finite numbers, stored as a tuple."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"RoPE: {kind} {key} must be a list of dim/2 = {dim // 2} numbers (one per pair), "
                        f"got {type(value).__name__}")
    if len(value) != dim // 2:
        raise ValueError(f"RoPE: {kind} {key} must have dim/2 = {dim // 2} entries (one per pair), got {len(value)}")
    for j, x in enumerate(value):
        if not (_is_number(x) and math.isfinite(x) and x > 0):
            raise ValueError(f"RoPE: {kind} {key} must hold positive finite numbers, got {x!r} at index {j}")
    return tuple(float(x) for x in value)


def _check_seq_len(seq_len):
    """seq_len: None, a non-negative int, or a 0-dim real tensor (a length computed on the device,
    e.g. max(positions) + 1)."""
    if seq_len is None:
        return None
    if isinstance(seq_len, Tensor):
        if seq_len.dim() != 0 or seq_len.dtype == torch.bool or seq_len.is_complex():
            raise ValueError(f"RoPE: seq_len must be a non-negative int, a 0-dim real tensor or None, got a "
                             f"{seq_len.dtype} tensor of shape {list(seq_len.shape)}")
        return seq_len
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 0:
        raise ValueError(f"RoPE: seq_len must be a non-negative int, a 0-dim real tensor or None, got {seq_len!r}")
    return seq_len


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
    factor = out.get("factor")  # absent or None only for "longrope", where it is optional
    if factor is not None:
        if not _is_number(factor) or not math.isfinite(factor) or factor < 1:
            raise ValueError(f"RoPE: scaling factor must be a finite number >= 1, got {factor!r}")
        out["factor"] = float(factor)
    if kind in ("ntk", "dynamic") and dim <= 2:
        raise ValueError(f"RoPE: {kind!r} scaling needs dim > 2 (base·s^(d/(d−2))), got dim={dim}")
    if "original_max_position_embeddings" in out:
        l0 = out["original_max_position_embeddings"]
        if not isinstance(l0, int) or isinstance(l0, bool) or l0 < 1:
            raise ValueError(f"RoPE: original_max_position_embeddings must be a positive int, got {l0!r}")
    att = out.get("attention_factor")
    if att is not None:
        if not _is_number(att) or not math.isfinite(att) or not att > 0:
            raise ValueError(f"RoPE: {kind} attention_factor must be a positive finite number, got {att!r}")
        out["attention_factor"] = float(att)
    if kind == "yarn":
        fast, slow = out["beta_fast"], out["beta_slow"]
        if not (_is_number(fast) and _is_number(slow) and fast > slow > 0):
            raise ValueError(f"RoPE: yarn needs beta_fast > beta_slow > 0, got beta_fast={fast!r}, beta_slow={slow!r}")
        out["beta_fast"], out["beta_slow"] = float(fast), float(slow)
        if not isinstance(out["truncate"], bool):
            raise TypeError(f"RoPE: yarn truncate must be a bool, got {out['truncate']!r}")
    if kind == "llama3":
        low, high = out["low_freq_factor"], out["high_freq_factor"]
        for key in ("low_freq_factor", "high_freq_factor"):
            value = out[key]
            if not _is_number(value) or not math.isfinite(value) or not value > 0:
                raise ValueError(f"RoPE: llama3 {key} must be a positive finite number, got {value!r}")
            out[key] = float(value)
        if not high > low:
            raise ValueError(f"RoPE: llama3 needs high_freq_factor > low_freq_factor, got "
                             f"low_freq_factor={low!r}, high_freq_factor={high!r}")
    if kind == "longrope":
        for key in ("short_factor", "long_factor"):
            out[key] = _factor_list(kind, key, out[key], dim)
        if factor is None and att is None:
            raise ValueError("RoPE: longrope needs 'factor' (the context extension max_position_embeddings / "
                             "original_max_position_embeddings, as transformers derives it) or 'attention_factor'")
        if att is None and factor > 1 and out["original_max_position_embeddings"] < 2:
            raise ValueError("RoPE: longrope's default attention_factor sqrt(1 + ln(factor)/ln(L0)) needs "
                             "original_max_position_embeddings >= 2; give 'attention_factor'")
    return out


class RoPE(nn.Module):
    """Rotary position embedding of head dimension ``dim`` (even; the whole head is rotated).

    ``layout="half"`` (GPT-NeoX) pairs x[i] with x[i + d/2]; ``"interleaved"`` (GPT-J, the
    RoFormer paper) pairs x[2i] with x[2i+1]. Rotation:
    (x1, x2) → attention_scaling·(x1·cos − x2·sin, x1·sin + x2·cos), angle m·θ_i.

    ``scaling``: None, or a transformers ``rope_scaling`` dict (see the module docstring):

    - {"type": "linear" | "ntk", "factor": s};
    - {"type": "dynamic", "factor": s, "original_max_position_embeddings": L0};
    - {"type": "yarn", "factor": s, "original_max_position_embeddings": L0}, optionally
      "beta_fast" (32), "beta_slow" (1), "attention_factor" (default 0.1·ln(s) + 1) and
      "truncate" (True);
    - {"type": "llama3", "factor": s, "original_max_position_embeddings": L0,
      "low_freq_factor": a, "high_freq_factor": b} with 0 < a < b (Llama 3.1: 8, 8192, 1, 4);
    - {"type": "longrope", "short_factor": [d/2 numbers], "long_factor": [d/2 numbers],
      "original_max_position_embeddings": L0} and "factor" (max_position_embeddings / L0) or
      "attention_factor" (default sqrt(1 + ln(factor)/ln(L0))), at least one of the two.

    ``seq_len`` (the current length) only matters for "dynamic" and "longrope"
    (``depends_on_length``); where positions are given without it, it is max(positions) + 1.

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
        """The dict ``from_config`` takes back (scaling with every default filled in; longrope's
        factor lists as new lists)."""
        scaling = None if self.scaling is None else {
            key: list(value) if isinstance(value, tuple) else value for key, value in self.scaling.items()}
        return {"dim": self.dim, "base": self.base, "layout": self.layout, "rope_scaling": scaling}

    # --- the tables ---------------------------------------------------------------------------

    @property
    def interleaved(self) -> bool:
        return self.layout == "interleaved"

    @property
    def depends_on_length(self) -> bool:
        """Whether the frequencies depend on the current length ("dynamic", "longrope")."""
        return self.scaling is not None and self.scaling["type"] in _LENGTH_DEPENDENT

    def inv_freq(self, seq_len=None, device=None) -> Tensor:
        """θ_i (float32 [d/2]) after scaling. ``seq_len``, the current length, only matters for
        "dynamic" and "longrope": a non-negative int, a 0-dim tensor (a length computed on the
        device, such as max(positions) + 1; ``device`` then defaults to its device) or None
        (unknown: dynamic NTK unscaled, longrope's short factors, as transformers at init)."""
        return self._inv_freq64(seq_len, device).to(torch.float32)

    def _inv_freq64(self, seq_len, device) -> Tensor:
        seq_len = _check_seq_len(seq_len)
        if device is None and isinstance(seq_len, Tensor):
            device = seq_len.device
        d, base, sc = self.dim, self.base, self.scaling
        kind = None if sc is None else sc["type"]
        if kind == "ntk":
            base = ntk_base(base, d, sc["factor"])
        two_i = torch.arange(0, d, 2, dtype=torch.float64, device=device)
        theta = base ** (-two_i / d)
        if kind == "linear":
            return theta / sc["factor"]
        if kind == "dynamic":
            # base' = base·s'^(d/(d−2)), i.e. θ_i' = θ_i·s'^(−2i/(d−2)): exactly θ_i at s' = 1. A
            # tensor length stays a tensor (no host sync, traceable under torch.compile).
            s, l0 = sc["factor"], sc["original_max_position_embeddings"]
            if isinstance(seq_len, Tensor):
                s_now = (s * seq_len.to(device=theta.device, dtype=torch.float64) / l0 - (s - 1)).clamp_min(1.0)
            else:
                s_now = dynamic_ntk_factor(s, seq_len, l0)
                if s_now == 1.0:
                    return theta
            return theta * s_now ** (-two_i / (d - 2))
        if kind == "yarn":
            ramp = yarn_ramp(d, base, sc["original_max_position_embeddings"], sc["beta_fast"], sc["beta_slow"],
                             sc["truncate"], device)
            return theta / sc["factor"] * ramp + theta * (1 - ramp)
        if kind == "llama3":
            s, l0 = sc["factor"], sc["original_max_position_embeddings"]
            low, high = sc["low_freq_factor"], sc["high_freq_factor"]
            turns = l0 * theta / (2 * math.pi)  # L0 / wavelength
            keep = ((turns - low) / (high - low)).clamp(0.0, 1.0)  # 1: kept, 0: interpolated by s
            return theta / s * (1 - keep) + theta * keep
        if kind == "longrope":
            l0 = sc["original_max_position_embeddings"]
            short = torch.tensor(sc["short_factor"], dtype=torch.float64, device=theta.device)
            long = torch.tensor(sc["long_factor"], dtype=torch.float64, device=theta.device)
            if isinstance(seq_len, Tensor):
                factors = torch.where(seq_len.to(device=theta.device) > l0, long, short)
            else:
                factors = long if seq_len is not None and seq_len > l0 else short
            return theta / factors
        return theta

    def attention_scaling(self, seq_len=None) -> float:
        """The factor cos and sin are multiplied by: ``attention_factor`` for "yarn" (default
        mscale = 0.1·ln(s) + 1) and "longrope" (default sqrt(1 + ln(s)/ln(L0)), at every length,
        as transformers and Phi-3 apply it), 1 for every other scaling."""
        sc = self.scaling
        if sc is None or sc["type"] not in ("yarn", "longrope"):
            return 1.0
        att = sc.get("attention_factor")
        if att is not None:
            return att
        if sc["type"] == "yarn":
            return yarn_mscale(sc["factor"])
        return longrope_attention_factor(sc["factor"], sc["original_max_position_embeddings"])

    def cos_sin(self, positions: Tensor, seq_len=None,
                dtype: torch.dtype = torch.float32) -> Tuple[Tensor, Tensor]:
        """(cos, sin) of the angles positions·θ_i, times ``attention_scaling``: shape
        positions.shape + [d/2], in float32 (or float64 with ``dtype=torch.float64``). ``seq_len``
        defaults to max(positions) + 1 (for "dynamic" and "longrope")."""
        if not isinstance(positions, Tensor):
            raise TypeError(f"RoPE.cos_sin: positions must be a tensor, got {type(positions).__name__}")
        if positions.dtype == torch.bool or positions.is_complex():
            raise TypeError(f"RoPE.cos_sin: positions must be integer or real, got {positions.dtype}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"RoPE.cos_sin: dtype must be torch.float32 or torch.float64, got {dtype}")
        if seq_len is None and self.depends_on_length and positions.numel():
            seq_len = _length_of_positions(positions)
        inv_freq = self.inv_freq(seq_len, positions.device).to(dtype)
        angles = positions.to(dtype).unsqueeze(-1) * inv_freq
        mscale = self.attention_scaling(seq_len)
        cos, sin = angles.cos(), angles.sin()
        if mscale != 1.0:
            cos, sin = cos * mscale, sin * mscale
        return cos, sin

    def kernel_args(self, seq_len=None, device=None) -> Tuple[Tensor, float, bool]:
        """What the fused attention kernel takes: (inv_freq float32 [d/2], attention_scaling,
        interleaved); ``seq_len`` as for ``inv_freq``."""
        return self.inv_freq(seq_len, device), self.attention_scaling(seq_len), self.interleaved

    def forward(self, x: Tensor, positions: Optional[Tensor] = None, seq_len: Optional[int] = None) -> Tensor:
        """Rotate x [..., L, d] (``kexue.ops.apply_rope``; ``seq_len`` defaults to max(positions) + 1
        when positions are given, else to L)."""
        return apply_rope(x, positions, self, seq_len=seq_len)

    def extra_repr(self) -> str:
        scaling = self.scaling if self.scaling is None else {
            key: f"<{len(value)} factors>" if isinstance(value, tuple) else value
            for key, value in self.scaling.items()}
        return f"dim={self.dim}, base={self.base:g}, layout={self.layout!r}, scaling={scaling}"
