"""RoPE: inverse frequencies against the published formulas for every scaling (llama3 and longrope
against transcriptions of the transformers library's recipes), the current length read from the
positions, the rotation's properties (norms, relative positions, layouts), the config round trip,
bad input."""
import math

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from kexue.nn import RoPE
from kexue.ops import apply_rope, reference_apply_rope, reference_rope_attention, rope_attention

D, BASE, L0 = 16, 10000.0, 64


# --- the formulas, written independently in numpy ----------------------------------------------

def hf_llama3_inv_freq(d, base, factor, low_freq_factor, high_freq_factor, old_context_len):
    """transformers.modeling_rope_utils._compute_llama3_parameters, transcribed pair by pair:
    compare each wavelength with old_context_len/high_freq_factor and old_context_len/low_freq_factor."""
    inv_freq = 1.0 / base ** (np.arange(0, d, 2, dtype=np.float64) / d)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    out = np.empty_like(inv_freq)
    for j, f in enumerate(inv_freq):
        wavelen = 2 * math.pi / f
        if wavelen < high_freq_wavelen:  # high frequency: unchanged
            out[j] = f
        elif wavelen > low_freq_wavelen:  # low frequency: divided by the factor
            out[j] = f / factor
        else:  # in between: smooth interpolation
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out[j] = (1 - smooth) * f / factor + smooth * f
    return out, 1.0


def hf_longrope_inv_freq(d, base, short_factor, long_factor, original_max_position_embeddings, factor=None,
                         attention_factor=None, max_position_embeddings=None, seq_len=None):
    """transformers.modeling_rope_utils._compute_longrope_parameters, transcribed: factor defaults
    to max_position_embeddings / original_max_position_embeddings, the attention factor to
    sqrt(1 + ln(factor)/ln(original)) (1 for factor <= 1), long_factor only for a given seq_len
    above the original length (dynamic_rope_update passes max(position_ids) + 1)."""
    if factor is None:
        factor = max_position_embeddings / original_max_position_embeddings
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else \
            math.sqrt(1 + math.log(factor) / math.log(original_max_position_embeddings))
    if seq_len and seq_len > original_max_position_embeddings:
        ext_factors = np.asarray(long_factor, dtype=np.float64)
    else:
        ext_factors = np.asarray(short_factor, dtype=np.float64)
    inv_freq = 1.0 / (ext_factors * base ** (np.arange(0, d, 2, dtype=np.float64) / d))
    return inv_freq, attention_factor


def published_inv_freq(d, base, scaling=None, seq_len=None):
    """(θ [d/2] float64, attention scaling) from the papers / the transformers library's recipes."""
    i = np.arange(d // 2, dtype=np.float64)
    theta = base ** (-2.0 * i / d)
    if scaling is None:
        return theta, 1.0
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind == "llama3":
        return hf_llama3_inv_freq(d, base, scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"],
                                  scaling["original_max_position_embeddings"])
    if kind == "longrope":
        return hf_longrope_inv_freq(d, base, scaling["short_factor"], scaling["long_factor"],
                                    scaling["original_max_position_embeddings"], scaling.get("factor"),
                                    scaling.get("attention_factor"), seq_len=seq_len)
    s = scaling["factor"]
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
    # Llama 3.1's recipe on a 64-token training length: all three wavelength regimes at every dim below
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": L0},
    {"type": "llama3", "factor": 32, "low_freq_factor": 0.5, "high_freq_factor": 2,
     "original_max_position_embeddings": 8192},
]


def longrope_scaling(dim, l0=L0, seed=0, **extra):
    """A longrope dict with per-pair factors like Phi-3's: short ones near 1, long ones growing
    from 1 to ~the extension factor along the pairs."""
    g = np.random.default_rng(seed)
    short = (1 + 0.2 * g.random(dim // 2)).tolist()
    long = (np.linspace(1, 30, dim // 2) * (1 + 0.1 * g.random(dim // 2))).tolist()
    return {"type": "longrope", "short_factor": short, "long_factor": long, "original_max_position_embeddings": l0,
            **extra}


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


@pytest.mark.parametrize("dim", [D, 64, 128])
@pytest.mark.parametrize("base", [BASE, 500000.0])
def test_llama3_matches_transcribed_transformers(dim, base):
    for s, low, high, l0 in [(8.0, 1.0, 4.0, 8192), (32.0, 1.0, 4.0, 8192), (4.0, 2.0, 16.0, 256), (2, 1, 3, L0)]:
        scaling = {"type": "llama3", "factor": s, "low_freq_factor": low, "high_freq_factor": high,
                   "original_max_position_embeddings": l0}
        rope = RoPE(dim, base, scaling=scaling)
        want, att = hf_llama3_inv_freq(dim, base, s, low, high, l0)
        for seq_len in (None, 10, 10 * l0):  # no dependence on the length
            np.testing.assert_allclose(rope.inv_freq(seq_len).numpy(), want, rtol=2e-7)
            assert rope.attention_scaling(seq_len) == att == 1.0
        assert not rope.depends_on_length
    # Llama 3.1 (head dim 128, base 500000, L0 8192): every regime is populated
    plain = RoPE(128, 500000.0).inv_freq().double()
    ours = RoPE(128, 500000.0, scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    got = ours.inv_freq().double()
    turns = 8192 * plain / (2 * math.pi)
    kept, interpolated = turns > 4, turns < 1
    between = ~kept & ~interpolated
    assert kept.sum() > 0 and interpolated.sum() > 0 and between.sum() > 0
    torch.testing.assert_close(got[kept], plain[kept], rtol=1e-6, atol=0)
    torch.testing.assert_close(got[interpolated], plain[interpolated] / 8, rtol=1e-6, atol=0)
    assert bool(((got[between] < plain[between]) & (got[between] > plain[between] / 8)).all())


@pytest.mark.parametrize("dim", [D, 64, 128])
def test_longrope_matches_transcribed_transformers(dim):
    l0 = 4096
    for extra, ref_kw in [({"factor": 32.0}, {"max_position_embeddings": 131072}),  # Phi-3-mini-128k
                          ({"factor": 131072 / 4096, "attention_factor": 1.19},
                           {"max_position_embeddings": 131072, "attention_factor": 1.19}),
                          ({"attention_factor": 1.1}, {"attention_factor": 1.1, "factor": 1.0}),
                          ({"factor": 1.0}, {"factor": 1.0})]:
        scaling = longrope_scaling(dim, l0, seed=dim, **extra)
        rope = RoPE(dim, BASE, scaling=scaling)
        assert rope.depends_on_length
        for seq_len in (None, 0, 1, 100, l0 - 1, l0, l0 + 1, 5001, 131072):
            want, att = hf_longrope_inv_freq(dim, BASE, scaling["short_factor"], scaling["long_factor"], l0,
                                             seq_len=seq_len, **ref_kw)
            np.testing.assert_allclose(rope.inv_freq(seq_len).numpy(), want, rtol=2e-7)
            # a length computed on the device gives the same frequencies
            if seq_len is not None:
                np.testing.assert_allclose(rope.inv_freq(torch.tensor(seq_len)).numpy(), want, rtol=2e-7)
            assert rope.attention_scaling(seq_len) == pytest.approx(att, rel=1e-12)
    # Phi-3-mini-128k's temperature: sqrt(1 + ln 32 / ln 4096)
    rope = RoPE(dim, scaling=longrope_scaling(dim, 4096, factor=32.0))
    assert rope.attention_scaling() == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))


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


def handed_out(theta):
    """The reference frequencies rounded to float32 as RoPE hands them out: at position 5000 the
    rounding (relative 6e-8) alone turns an angle by 3e-4."""
    return np.asarray(theta, dtype=np.float32).astype(np.float64)


def rotate_reference(x, pos, theta, att, layout):
    """x [..., L, d] (numpy) rotated as complex pairs times att·exp(i·pos·θ), pos [L] or [B, L]."""
    pos = np.asarray(pos, dtype=np.float64)
    if pos.ndim == 2:  # [B, L] against x [B, ..., L, d]
        pos = pos.reshape(pos.shape[0], *([1] * (x.ndim - 3)), pos.shape[1])
    z = as_complex_pairs(x, layout) * np.exp(1j * pos[..., None] * theta) * att
    out = np.empty_like(x)
    d = x.shape[-1]
    if layout == "interleaved":
        out[..., 0::2], out[..., 1::2] = z.real, z.imag
    else:
        out[..., : d // 2], out[..., d // 2:] = z.real, z.imag
    return out


def attention_reference(q, k, v, pos, theta, att, layout, causal):
    """softmax(R(q)·R(k)ᵀ/√d)·v in numpy; the queries are the last Lq of the Lk positions."""
    lq, lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    qr = rotate_reference(q, np.asarray(pos)[..., lk - lq:], theta, att, layout)
    kr = rotate_reference(k, pos, theta, att, layout)
    logits = qr @ np.swapaxes(kr, -1, -2) / math.sqrt(d)
    if causal:
        logits = np.where(np.arange(lk)[None, :] <= np.arange(lq)[:, None] + lk - lq, logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def test_dynamic_ntk_takes_the_length_from_the_positions():
    # A decoding step at position 5000 (training length 2048) is at length 5001, as transformers'
    # dynamic_rope_update reads it (max(position_ids) + 1), not at the step's length 1.
    d, l0 = 64, 2048
    scaling = {"type": "dynamic", "factor": 4.0, "original_max_position_embeddings": l0}
    rope = RoPE(d, BASE, scaling=scaling)
    assert rope.depends_on_length
    theta64, _ = published_inv_freq(d, BASE, scaling, seq_len=5001)
    assert not np.allclose(theta64, published_inv_freq(d, BASE)[0])  # scaled at 5001
    np.testing.assert_allclose(rope.inv_freq(5001).numpy(), theta64, rtol=2e-7)
    theta = handed_out(theta64)
    x = torch.randn(1, 4, 1, d, dtype=torch.float64)
    pos = torch.tensor([[5000]])
    want = rotate_reference(x.numpy(), pos.numpy(), theta, 1.0, "half")
    for got in (apply_rope(x, pos, rope), rope(x, pos), reference_apply_rope(x, pos, rope),
                apply_rope(x, pos, rope, seq_len=5001)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
    # the old behaviour (length 1: no scaling) is still there on request
    np.testing.assert_allclose(apply_rope(x, pos, rope, seq_len=1).numpy(),
                               rotate_reference(x.numpy(), pos.numpy(), handed_out(published_inv_freq(d, BASE)[0]), 1.0,
                                                "half"),
                               rtol=1e-6, atol=1e-6)
    cos, _ = rope.cos_sin(pos, dtype=torch.float64)
    np.testing.assert_allclose(cos.numpy(), np.cos(5000 * theta)[None, None], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rope.inv_freq(torch.tensor(5001)).numpy(), theta64, rtol=2e-7)
    # within the training length nothing changes, whatever the positions' shape
    np.testing.assert_allclose(rope.cos_sin(torch.tensor([[3], [2047]]))[0].numpy(),
                               RoPE(d, BASE).cos_sin(torch.tensor([[3], [2047]]))[0].numpy(), rtol=0, atol=0)
    # one length for the whole batch: the largest position of any row
    x2 = torch.randn(2, 4, 1, d, dtype=torch.float64)
    pos2 = torch.tensor([[10], [5000]])
    np.testing.assert_allclose(apply_rope(x2, pos2, rope).numpy(),
                               rotate_reference(x2.numpy(), pos2.numpy(), theta, 1.0, "half"), rtol=1e-6, atol=1e-6)
    # rope_attention over a sliding-window cache of the last 3 keys, positions 4998..5000
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 1, d, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 3, d, generator=g, dtype=torch.float64) for _ in range(2))
    kpos = torch.tensor([4998, 4999, 5000])
    want = attention_reference(q.numpy(), k.numpy(), v.numpy(), kpos.numpy(), theta, 1.0, "half", True)
    for fn in (rope_attention, reference_rope_attention):
        np.testing.assert_allclose(fn(q, k, v, rope=rope, positions=kpos, causal=True).numpy(), want,
                                   rtol=1e-6, atol=1e-6)


def test_longrope_switches_factors_at_the_original_length():
    # transformers: long_factor once max(position_ids) + 1 > original_max_position_embeddings
    d, l0 = D, 64
    scaling = longrope_scaling(d, l0, factor=16.0)
    rope = RoPE(d, scaling=scaling)
    short, att = hf_longrope_inv_freq(d, BASE, scaling["short_factor"], scaling["long_factor"], l0, factor=16.0)
    long, _ = hf_longrope_inv_freq(d, BASE, scaling["short_factor"], scaling["long_factor"], l0, factor=16.0,
                                   seq_len=l0 + 1)
    short, long = handed_out(short), handed_out(long)
    x = torch.randn(2, 1, 1, d, dtype=torch.float64)
    for last, theta in [(0, short), (l0 - 1, short), (l0, long), (5000, long)]:
        pos = torch.tensor([last])
        want = rotate_reference(x.numpy(), pos.numpy(), theta, att, "half")
        np.testing.assert_allclose(apply_rope(x, pos, rope).numpy(), want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(reference_apply_rope(x, pos, rope).numpy(), want, rtol=1e-6, atol=1e-6)
    # without positions: the tensor's length decides
    x = torch.randn(1, 1, l0 + 1, d, dtype=torch.float64)
    np.testing.assert_allclose(apply_rope(x, None, rope).numpy(),
                               rotate_reference(x.numpy(), np.arange(l0 + 1), long, att, "half"), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(apply_rope(x[..., :l0, :], None, rope).numpy(),
                               rotate_reference(x[..., :l0, :].numpy(), np.arange(l0), short, att, "half"),
                               rtol=1e-6, atol=1e-6)


KERNEL_SCALINGS = {
    "llama3": lambda d: {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 256},
    "longrope": lambda d: longrope_scaling(d, 256, factor=8.0),
    "dynamic": lambda d: {"type": "dynamic", "factor": 4.0, "original_max_position_embeddings": 256},
}


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("kind", sorted(KERNEL_SCALINGS))
@pytest.mark.parametrize("last", [200, 4000])  # within / beyond the original length 256
def test_scalings_rotate_and_attend_like_the_reference(device, kind, layout, last):
    # the fused kernels (CPU, the SIMT emulator of the CUDA kernels, CUDA) and the torch reference
    # against a numpy rotation by the transcribed frequencies at length max(positions) + 1
    d, L = D, 7
    scaling = KERNEL_SCALINGS[kind](d)
    rope = RoPE(d, layout=layout, scaling=scaling)
    pos = torch.tensor([0, 1, 2, 5, 11, 100, last])
    theta, att = published_inv_freq(d, BASE, scaling, seq_len=last + 1)
    np.testing.assert_allclose(rope.inv_freq(last + 1).numpy(), theta, rtol=2e-7)
    theta = handed_out(theta)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, L, d, generator=g, dtype=torch.float64)
    q, k, v = (torch.randn(2, 2, L, d, generator=g, dtype=torch.float64) for _ in range(3))
    want_x = rotate_reference(x.numpy(), pos.numpy(), theta, att, layout)
    want = attention_reference(q.numpy(), k.numpy(), v.numpy(), pos.numpy(), theta, att, layout, True)
    want_last = attention_reference(q[..., -1:, :].numpy(), k.numpy(), v.numpy(), pos.numpy(), theta, att, layout,
                                    True)  # a decoding step: the last query over the cache
    x, q, k, v, pos = (t.to(device) for t in (x, q, k, v, pos))
    np.testing.assert_allclose(apply_rope(x, pos, rope).cpu().numpy(), want_x, rtol=1e-6, atol=1e-6)
    for fn in (rope_attention, reference_rope_attention):
        np.testing.assert_allclose(fn(q, k, v, rope=rope, positions=pos, causal=True).cpu().numpy(), want,
                                   rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        rope_attention(q[..., -1:, :], k, v, rope=rope, positions=pos, causal=True).cpu().numpy(), want_last,
        rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["dynamic", "longrope"])
def test_length_from_positions_compiles_without_graph_breaks(kind):
    # max(positions) + 1 stays a tensor: no .item(), one graph under fullgraph=True.
    d, l0 = 8, 16
    scaling = {"type": "dynamic", "factor": 4.0, "original_max_position_embeddings": l0} if kind == "dynamic" \
        else longrope_scaling(d, l0, factor=4.0)
    rope = RoPE(d, scaling=scaling)
    torch._dynamo.reset()
    counters.clear()
    fn = torch.compile(lambda x, p: apply_rope(x, p, rope), fullgraph=True, dynamic=True, backend="aot_eager")
    x = torch.randn(2, 3, 1, d)
    for last in (5, 100):  # within and beyond l0: the same graph
        pos = torch.tensor([[last], [last // 2]])
        torch.testing.assert_close(fn(x, pos), apply_rope(x, pos, rope, seq_len=last + 1), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(fn(x, torch.tensor([[100], [5]])), apply_rope(x, torch.tensor([[100], [5]]), rope,
                                                                            seq_len=1))
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


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
             ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": L0}, None),
             ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": L0}, None)]
    for scaling, seq_len in cases:
        try:  # the config/initialiser API moves between transformers versions
            config = LlamaConfig(hidden_size=heads * d, num_attention_heads=heads, rope_theta=BASE,
                                 max_position_embeddings=L0 * 8 if scaling["rope_type"] in ("yarn", "llama3") else L0,
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
    for scaling in SCALINGS + [longrope_scaling(D, 128, factor=8.0), longrope_scaling(D, 512, attention_factor=1.2)]:
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
    # longrope's factor lists: plain lists out, copies (the module's own stay put), a short repr
    lr = longrope_scaling(8, 64, factor=4)
    rope = RoPE(8, scaling=lr)
    cfg = rope.config()
    assert cfg["rope_scaling"]["short_factor"] == lr["short_factor"]
    assert type(cfg["rope_scaling"]["long_factor"]) is list
    assert cfg["rope_scaling"]["factor"] == 4.0 and "attention_factor" not in cfg["rope_scaling"]
    cfg["rope_scaling"]["short_factor"][0] = 100.0
    lr["long_factor"][0] = 100.0
    assert rope.config()["rope_scaling"]["short_factor"][0] != 100.0 and rope.scaling["long_factor"][0] != 100.0
    assert "<4 factors>" in repr(rope)
    cfg = {"dim": 8, "rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1,
                                      "high_freq_factor": 4, "original_max_position_embeddings": 8192}}
    assert RoPE.from_config(cfg).config()["rope_scaling"] == {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                              "high_freq_factor": 4.0,
                                                              "original_max_position_embeddings": 8192}


@pytest.mark.parametrize("kwargs,error,match", [
    ({"dim": 7}, ValueError, "even"),
    ({"dim": 0}, ValueError, "positive int"),
    ({"dim": 8.0}, ValueError, "positive int"),
    ({"dim": 8, "base": 1.0}, ValueError, "base"),
    ({"dim": 8, "layout": "neox"}, ValueError, "layout"),
    ({"dim": 8, "scaling": "linear"}, TypeError, "dict"),
    ({"dim": 8, "scaling": {"factor": 2.0}}, ValueError, "needs a 'type'"),
    ({"dim": 8, "scaling": {"type": "mrope", "factor": 2.0}}, ValueError, "unknown scaling type"),
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
    # llama3
    ({"dim": 8, "scaling": {"type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64}}, ValueError, "needs 'low_freq_factor'"),
    ({"dim": 8, "scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}},
     ValueError, "needs 'original_max_position_embeddings'"),
    ({"dim": 8, "scaling": {"type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64}}, ValueError, "needs 'factor'"),
    ({"dim": 8, "scaling": {"type": "llama3", "factor": 0.5, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64}}, ValueError, ">= 1"),
    ({"dim": 8, "scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64}}, ValueError, "high_freq_factor > low_freq_factor"),
    ({"dim": 8, "scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64}}, ValueError, "low_freq_factor must be a positive"),
    ({"dim": 8, "scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": "4",
                            "original_max_position_embeddings": 64}}, ValueError,
     "high_freq_factor must be a positive"),
    ({"dim": 8, "scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64.0}}, ValueError, "positive int"),
    ({"dim": 8, "scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64, "beta_fast": 32}}, ValueError, "does not take"),
    # longrope
    ({"dim": 8, "scaling": {"type": "longrope", "short_factor": [1.0] * 4, "original_max_position_embeddings": 64,
                            "factor": 2.0}}, ValueError, "needs 'long_factor'"),
    ({"dim": 8, "scaling": {"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
                            "factor": 2.0}}, ValueError, "needs 'original_max_position_embeddings'"),
    ({"dim": 8, "scaling": {"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 3,
                            "original_max_position_embeddings": 64, "factor": 2.0}}, ValueError,
     r"long_factor must have dim/2 = 4 entries \(one per pair\), got 3"),
    ({"dim": 8, "scaling": {"type": "longrope", "short_factor": "1,1,1,1", "long_factor": [2.0] * 4,
                            "original_max_position_embeddings": 64, "factor": 2.0}}, TypeError,
     "short_factor must be a list"),
    ({"dim": 8, "scaling": {"type": "longrope", "short_factor": [1.0, 1.0, -1.0, 1.0], "long_factor": [2.0] * 4,
                            "original_max_position_embeddings": 64, "factor": 2.0}}, ValueError,
     "short_factor must hold positive finite numbers, got -1.0 at index 2"),
    ({"dim": 8, "scaling": {"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0, True, 2.0, 2.0],
                            "original_max_position_embeddings": 64, "factor": 2.0}}, ValueError,
     "long_factor must hold positive finite numbers"),
    ({"dim": 8, "scaling": {"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
                            "original_max_position_embeddings": 64}}, ValueError,
     "needs 'factor'.*or 'attention_factor'"),
    ({"dim": 8, "scaling": {"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
                            "original_max_position_embeddings": 64, "attention_factor": 0.0}}, ValueError,
     "longrope attention_factor must be a positive"),
    ({"dim": 8, "scaling": {"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
                            "original_max_position_embeddings": 64, "factor": 0.5}}, ValueError, ">= 1"),
    ({"dim": 8, "scaling": {"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
                            "original_max_position_embeddings": 1, "factor": 2.0}}, ValueError,
     "original_max_position_embeddings >= 2"),
    ({"dim": 8, "scaling": {"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
                            "original_max_position_embeddings": 64, "factor": 2.0, "beta_slow": 1}}, ValueError,
     "does not take"),
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
    with pytest.raises(ValueError, match="seq_len must be a non-negative int, a 0-dim real tensor"):
        rope.inv_freq(seq_len=torch.tensor([3]))
