"""RoPE: inverse frequencies against the published formulas for every scaling, the rotation's
properties (norms, relative positions, layouts), the config round trip, bad input."""
import math

import numpy as np
import pytest
import torch

from kexue.nn import RoPE
from kexue.ops import apply_rope, reference_apply_rope

D, BASE, L0 = 16, 10000.0, 64


# --- the formulas, written independently in numpy ----------------------------------------------

def published_inv_freq(d, base, scaling=None, seq_len=None):
    """(θ [d/2] float64, attention scaling) from the papers / the transformers library's recipes."""
    i = np.arange(d // 2, dtype=np.float64)
    theta = base ** (-2.0 * i / d)
    if scaling is None:
        return theta, 1.0
    kind, s = scaling.get("type", scaling.get("rope_type")), scaling["factor"]
    if kind == "linear":  # Chen et al. 2023: m → m/s
        return theta / s, 1.0
    if kind == "ntk":
        return (base * s ** (d / (d - 2))) ** (-2.0 * i / d), 1.0
    if kind == "dynamic":
        l0 = scaling["original_max_position_embeddings"]
        length = l0 if seq_len is None or seq_len < l0 else seq_len
        s_now = s * length / l0 - (s - 1)
        return (base * s_now ** (d / (d - 2))) ** (-2.0 * i / d), 1.0
    assert kind == "yarn"
    l0 = scaling["original_max_position_embeddings"]
    fast, slow = scaling.get("beta_fast", 32), scaling.get("beta_slow", 1)

    def pair_turning(rotations):  # pair index whose wavelength 2π·base^(2i/d) fits `rotations` times in L0
        return d * np.log(l0 / (rotations * 2 * np.pi)) / (2 * np.log(base))

    lo, hi = pair_turning(fast), pair_turning(slow)
    if scaling.get("truncate", True):
        lo, hi = np.floor(lo), np.ceil(hi)
    lo, hi = max(lo, 0), min(hi, d - 1)
    gamma = np.clip((i - lo) / (hi - lo), 0, 1)  # 1 = interpolate
    att = scaling.get("attention_factor") or (0.1 * np.log(s) + 1 if s > 1 else 1.0)
    return theta * (1 - gamma) + theta / s * gamma, att


SCALINGS = [
    None,
    {"type": "linear", "factor": 4.0},
    {"rope_type": "linear", "factor": 1.0},
    {"type": "ntk", "factor": 8.0},
    {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": L0},
    {"type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096},
    {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048, "beta_fast": 16, "beta_slow": 2,
     "attention_factor": 1.3, "truncate": False},
]


@pytest.mark.parametrize("dim", [D, 64, 128])
@pytest.mark.parametrize("scaling", SCALINGS)
def test_inv_freq_matches_published_formulas(scaling, dim):
    rope = RoPE(dim, BASE, scaling=scaling)
    for seq_len in (None, L0 // 2, L0, 3 * L0):
        want, att = published_inv_freq(dim, BASE, scaling, seq_len)
        got = rope.inv_freq(seq_len)
        assert got.dtype == torch.float32 and got.shape == (dim // 2,)
        np.testing.assert_allclose(got.numpy(), want, rtol=2e-7)
        assert rope.attention_scaling(seq_len) == pytest.approx(att, rel=1e-12)


def test_beta_base_reading_of_ntk_and_yarn():
    # NTK: the lowest frequency is interpolated by exactly s, the highest kept (extrapolated).
    s, d = 8.0, 64
    plain, ntk = RoPE(d).inv_freq().double(), RoPE(d, scaling={"type": "ntk", "factor": s}).inv_freq().double()
    assert ntk[0] == plain[0]
    torch.testing.assert_close(ntk[-1], plain[-1] / s, rtol=1e-6, atol=0)
    assert bool((ntk[1:-1] < plain[1:-1]).all() and (ntk[1:-1] > plain[1:-1] / s).all())
    # YaRN: pairs turning more than beta_fast times within L0 are kept, fewer than beta_slow
    # times are interpolated by s.
    l0 = 2048
    yarn = RoPE(d, scaling={"type": "yarn", "factor": s, "original_max_position_embeddings": l0})
    turns = l0 * plain / (2 * math.pi)
    got = yarn.inv_freq().double()
    torch.testing.assert_close(got[turns > 33], plain[turns > 33], rtol=1e-6, atol=0)
    torch.testing.assert_close(got[turns < 0.9], plain[turns < 0.9] / s, rtol=1e-6, atol=0)
    assert yarn.attention_scaling() == pytest.approx(0.1 * math.log(s) + 1)


def test_dynamic_ntk_changes_only_past_the_training_length():
    rope = RoPE(D, scaling={"type": "dynamic", "factor": 4.0, "original_max_position_embeddings": L0})
    plain = RoPE(D).inv_freq()
    torch.testing.assert_close(rope.inv_freq(L0), plain, rtol=0, atol=0)
    torch.testing.assert_close(rope.inv_freq(L0 // 2), plain, rtol=0, atol=0)
    longer = rope.inv_freq(4 * L0)
    assert bool((longer[1:] < plain[1:]).all())
    # apply_rope evaluates the dynamic scaling at the sequence length unless told otherwise
    x = torch.randn(1, 1, 4 * L0, D, dtype=torch.float64)
    torch.testing.assert_close(apply_rope(x, None, rope), apply_rope(x, None, rope, seq_len=4 * L0))
    assert not torch.allclose(apply_rope(x, None, rope), apply_rope(x, None, rope, seq_len=L0))


def test_matches_transformers_when_installed():
    pytest.importorskip("transformers")
    try:
        from transformers import LlamaConfig
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    except ImportError:
        pytest.skip("this transformers version has no ROPE_INIT_FUNCTIONS")
    heads, d = 2, 64
    cases = [({"rope_type": "linear", "factor": 4.0}, None),
             ({"rope_type": "dynamic", "factor": 2.0}, 3 * L0),
             ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": L0}, None)]
    for scaling, seq_len in cases:
        try:  # the config/initialiser API moves between transformers versions
            config = LlamaConfig(hidden_size=heads * d, num_attention_heads=heads, rope_theta=BASE,
                                 max_position_embeddings=L0 * 8 if scaling["rope_type"] == "yarn" else L0,
                                 rope_scaling=dict(scaling))
            theirs, att = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, "cpu", seq_len=seq_len)
        except (TypeError, KeyError, AttributeError) as e:
            pytest.skip(f"this transformers version's rope API differs: {e}")
        ours_scaling = dict(scaling)
        ours_scaling.setdefault("original_max_position_embeddings", L0)
        ours = RoPE(d, BASE, scaling=ours_scaling)
        torch.testing.assert_close(ours.inv_freq(seq_len), theirs.float(), rtol=1e-6, atol=0)
        assert ours.attention_scaling(seq_len) == pytest.approx(att)


# --- the rotation ------------------------------------------------------------------------------

def as_complex_pairs(x, layout):
    d = x.shape[-1]
    if layout == "interleaved":
        return x[..., 0::2] + 1j * x[..., 1::2]
    return x[..., : d // 2] + 1j * x[..., d // 2:]


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("scaling", [None, SCALINGS[5]])
def test_rotation_is_complex_multiplication(layout, scaling):
    rope = RoPE(D, layout=layout, scaling=scaling)
    x = torch.randn(2, 3, 7, D, dtype=torch.float64)
    pos = torch.tensor([0, 1, 2, 5, 11, 100, 4000])
    got = as_complex_pairs(apply_rope(x, pos, rope).numpy(), layout)
    theta = rope.inv_freq().double().numpy()
    want = as_complex_pairs(x.numpy(), layout) * np.exp(1j * pos.numpy()[:, None] * theta) * rope.attention_scaling()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rotation_preserves_norms_and_scales_with_mscale(layout):
    x = torch.randn(3, 2, 9, D, dtype=torch.float64)
    y = apply_rope(x, torch.arange(9) * 37, RoPE(D, layout=layout))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    yarn = RoPE(D, layout=layout, scaling={"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32})
    torch.testing.assert_close(apply_rope(x, None, yarn).norm(dim=-1), x.norm(dim=-1) * (0.1 * math.log(8) + 1))


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_scores_depend_only_on_relative_position(layout):
    g = torch.Generator().manual_seed(0)
    rope = RoPE(D, layout=layout, scaling={"type": "ntk", "factor": 2.0})
    q, k = torch.randn(2, D, generator=g, dtype=torch.float64)
    for m, n, shift in [(0, 0, 5), (3, 10, 100), (50, 7, 1234), (2.5, 0.5, 7.25)]:
        def score(a, b):
            qr = apply_rope(q.view(1, D), torch.tensor([a], dtype=torch.float64), rope)
            kr = apply_rope(k.view(1, D), torch.tensor([b], dtype=torch.float64), rope)
            return (qr * kr).sum()

        torch.testing.assert_close(score(m, n), score(m + shift, n + shift), rtol=1e-10, atol=1e-10)
    # and it does depend on the offset
    s0 = (apply_rope(q.view(1, D), torch.tensor([0]), rope) * apply_rope(k.view(1, D), torch.tensor([3]), rope)).sum()
    s1 = (apply_rope(q.view(1, D), torch.tensor([0]), rope) * apply_rope(k.view(1, D), torch.tensor([4]), rope)).sum()
    assert abs(s0 - s1) > 1e-6


def test_half_and_interleaved_layouts_are_permutations_of_each_other():
    x = torch.randn(2, 3, 5, D, dtype=torch.float64)
    pos = torch.tensor([[0, 3, 4, 9, 20], [1, 1, 2, 3, 5]])
    to_half = torch.cat([torch.arange(0, D, 2), torch.arange(1, D, 2)])  # interleaved index of half slot j
    back = torch.argsort(to_half)
    inter = apply_rope(x, pos, RoPE(D, layout="interleaved"))
    half = apply_rope(x[..., to_half], pos, RoPE(D, layout="half"))[..., back]
    torch.testing.assert_close(inter, half, rtol=0, atol=1e-14)


def test_positions_broadcast_defaults_and_dtypes():
    rope = RoPE(D)
    x = torch.randn(2, 3, 6, D)
    default = apply_rope(x, None, rope)
    torch.testing.assert_close(default, apply_rope(x, torch.arange(6), rope))
    torch.testing.assert_close(default, apply_rope(x, torch.arange(6).expand(2, 6), rope))
    torch.testing.assert_close(default, apply_rope(x, torch.arange(6.0), rope))
    per_row = torch.stack([torch.arange(6), torch.arange(6) + 10])
    y = apply_rope(x, per_row, rope)
    torch.testing.assert_close(y[1], apply_rope(x[1], torch.arange(6) + 10, rope))
    torch.testing.assert_close(rope(x, per_row), y)
    # low precision in, same dtype out, computed in float32
    xb = x.to(torch.bfloat16)
    yb = apply_rope(xb, None, rope)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb, apply_rope(xb.float(), None, rope).to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(reference_apply_rope(x, per_row, rope), y)
    cos, sin = rope.cos_sin(per_row)
    assert cos.shape == (2, 6, D // 2) and cos.dtype == torch.float32
    assert rope.cos_sin(per_row, dtype=torch.float64)[1].dtype == torch.float64


def test_apply_rope_gradcheck():
    rope = RoPE(6, layout="interleaved", scaling={"type": "linear", "factor": 2.0})
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, torch.tensor([0, 2, 3, 7]), rope), (x,))


def test_kernel_args_and_config_round_trip():
    for scaling in SCALINGS:
        rope = RoPE(D, 500000.0, "interleaved", scaling)
        again = RoPE.from_config(rope.config())
        assert again.config() == rope.config()
        torch.testing.assert_close(again.inv_freq(200), rope.inv_freq(200), rtol=0, atol=0)
        inv_freq, att, interleaved = rope.kernel_args(200)
        torch.testing.assert_close(inv_freq, rope.inv_freq(200), rtol=0, atol=0)
        assert att == rope.attention_scaling(200) and interleaved is True
    cfg = {"dim": 8, "rope_scaling": {"rope_type": "yarn", "factor": 2, "original_max_position_embeddings": 16}}
    rope = RoPE.from_config(cfg)
    assert rope.layout == "half" and rope.base == 10000.0 and rope.scaling["beta_fast"] == 32.0
    assert RoPE(8, scaling={"type": "default"}).scaling is None


@pytest.mark.parametrize("kwargs,error,match", [
    ({"dim": 7}, ValueError, "even"),
    ({"dim": 0}, ValueError, "positive int"),
    ({"dim": 8.0}, ValueError, "positive int"),
    ({"dim": 8, "base": 1.0}, ValueError, "base"),
    ({"dim": 8, "layout": "neox"}, ValueError, "layout"),
    ({"dim": 8, "scaling": "linear"}, TypeError, "dict"),
    ({"dim": 8, "scaling": {"factor": 2.0}}, ValueError, "needs a 'type'"),
    ({"dim": 8, "scaling": {"type": "longrope", "factor": 2.0}}, ValueError, "unknown scaling type"),
    ({"dim": 8, "scaling": {"type": "linear", "rope_type": "ntk", "factor": 2.0}}, ValueError, "give one"),
    ({"dim": 8, "scaling": {"type": "linear"}}, ValueError, "needs 'factor'"),
    ({"dim": 8, "scaling": {"type": "linear", "factor": 0.5}}, ValueError, ">= 1"),
    ({"dim": 8, "scaling": {"type": "linear", "factor": 2.0, "beta_fast": 3}}, ValueError, "does not take"),
    ({"dim": 8, "scaling": {"type": "dynamic", "factor": 2.0}}, ValueError, "original_max_position_embeddings"),
    ({"dim": 8, "scaling": {"type": "yarn", "factor": 2.0}}, ValueError, "original_max_position_embeddings"),
    ({"dim": 8, "scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 10.5}}, ValueError,
     "positive int"),
    ({"dim": 8, "scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64, "beta_fast": 1,
                            "beta_slow": 2}}, ValueError, "beta_fast > beta_slow"),
    ({"dim": 8, "scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64,
                            "attention_factor": -1}}, ValueError, "attention_factor"),
    ({"dim": 2, "scaling": {"type": "ntk", "factor": 2.0}}, ValueError, "dim > 2"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        RoPE(**kwargs)


def test_bad_inputs_to_the_rotation():
    rope = RoPE(8)
    with pytest.raises(ValueError, match="from_config: 'dim' is required"):
        RoPE.from_config({"base": 10.0})
    with pytest.raises(ValueError, match="unknown keys"):
        RoPE.from_config({"dim": 8, "theta": 10.0})
    with pytest.raises(ValueError, match=r"rope.dim \(8\) must equal the head dim"):
        apply_rope(torch.randn(2, 5, 4), None, rope)
    with pytest.raises(ValueError, match="head dim must be even"):
        apply_rope(torch.randn(2, 5, 7), None, rope)
    with pytest.raises(ValueError, match=r"positions must have shape \[5\] or \[2, 5\]"):
        apply_rope(torch.randn(2, 5, 8), torch.arange(4), rope)
    with pytest.raises(TypeError, match="integer or real"):
        apply_rope(torch.randn(2, 5, 8), torch.ones(5, dtype=torch.bool), rope)
    with pytest.raises(TypeError, match="floating-point"):
        apply_rope(torch.ones(2, 5, 8, dtype=torch.long), None, rope)
    with pytest.raises(TypeError, match="kexue.nn.RoPE"):
        apply_rope(torch.randn(2, 5, 8), None, None)
    with pytest.raises(ValueError, match="dtype must be"):
        rope.cos_sin(torch.arange(3), dtype=torch.float16)
    with pytest.raises(ValueError, match="seq_len must be a non-negative int"):
        rope.inv_freq(seq_len=3.5)
