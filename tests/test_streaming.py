"""Non-temporal stores for large outputs (csrc/cpu/streaming.h): the streamed path must write
exactly what the plain stores write, for every instruction set and dtype, at every alignment of
the output (odd sample sizes put sample and chunk starts inside 64-byte lines), and the first
and last partial lines must not be lost."""
import pytest
import torch

import kexue
from kexue.ops import ddim_step, ddpm_step, dynamic_routing, ode_heun_step, q_sample, reference_q_sample

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# per-sample sizes: shorter than one line (the steps and a one-ᾱ q_sample stream it; q_sample
# with a ᾱ per sample runs such small samples whole, unstreamed), odd (misaligned starts), past a
# 16384-element chunk
SHAPES = ((5, 7), (3, 5001), (2, 40007))


@pytest.fixture
def stream_everything():
    """Streams every output, however small; puts the threshold back afterwards."""
    before = kexue._C._set_cpu_stream_min_bytes(0)
    yield
    kexue._C._set_cpu_stream_min_bytes(before)


def both_paths(fn):
    """fn() with plain stores, then with every output streamed. Before the streamed call, blocks
    of the outputs' sizes are filled with NaN and freed, so that the streamed outputs are likely
    to land on NaN rather than on a copy of the plain ones: an entry it fails to write shows."""
    before = kexue._C._set_cpu_stream_min_bytes(1 << 62)
    try:
        plain = fn()
        kexue._C._set_cpu_stream_min_bytes(0)
        outputs = plain if isinstance(plain, (tuple, list)) else (plain,)
        poison = [torch.full_like(p, float("nan")) for p in outputs]
        del poison
        streamed = fn()
    finally:
        kexue._C._set_cpu_stream_min_bytes(before)
    return plain, streamed


def assert_identical(plain, streamed, what):
    plain = plain if isinstance(plain, (tuple, list)) else (plain,)
    streamed = streamed if isinstance(streamed, (tuple, list)) else (streamed,)
    for p, s in zip(plain, streamed):
        assert torch.equal(p, s), f"{what}: streamed output differs at {(p != s).nonzero()[:5].tolist()}"


def step_inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, e, e2, z = (torch.randn(shape, generator=g).to(dtype) for _ in range(4))
    ab = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.8 + 0.1
    return x, e, e2, z, ab


@pytest.mark.parametrize("shape", SHAPES)
def test_streamed_diffusion_outputs_equal_plain_ones(shape, restore_cpu_isa):
    acp = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    t = torch.tensor([500, 999, 3][: shape[0]] + [10] * max(0, shape[0] - 3))
    for isa in kexue._C.cpu_isas():
        kexue._C.set_cpu_isa(isa)
        for dtype in DTYPES:
            x, e, e2, z, ab = step_inputs(shape, dtype)
            what = f"{isa} {dtype} {shape}"
            cases = {
                "q_sample": lambda: q_sample(x, e, ab),
                "q_sample one ᾱ": lambda: q_sample(x, e, 0.3),
                "ddim x0 clip": lambda: ddim_step(x, e, ab, ab.sqrt(), clip_x0=1.0, return_x0=True),
                "ddim η=1 noise": lambda: ddim_step(x, e, ab, ab.sqrt(), eta=1.0, noise=z),
                "ddpm philox": lambda: ddpm_step(x, e, t, acp, generator=torch.Generator().manual_seed(7)),
                "ddpm one t x0": lambda: ddpm_step(x, e, 500, acp, noise=z, return_x0=True),
                "heun": lambda: ode_heun_step(x, e, e2, ab, ab.sqrt()),
            }
            for name, fn in cases.items():
                assert_identical(*both_paths(fn), f"{what} {name}")


def test_streamed_q_sample_on_offset_inputs_matches_reference(stream_everything):
    # inputs starting 3 elements into their storage: the loads are misaligned as well
    base = torch.randn(4 * 1003 + 3, dtype=torch.float64)
    x = base[3:].view(4, 1003)
    e = base.flip(0)[3:].view(4, 1003)
    ab = torch.tensor([0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    torch.testing.assert_close(q_sample(x, e, ab), reference_q_sample(x, e, ab), rtol=1e-15, atol=1e-15)


def test_default_threshold_streams_a_large_q_sample():
    # 2 × (2^22 + 5) fp32 elements: a 32 MiB output, streamed at the default threshold
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, (1 << 22) + 5, generator=g)
    e = torch.randn(2, (1 << 22) + 5, generator=g)
    ab = torch.tensor([0.25, 0.81])
    out = q_sample(x, e, ab)
    torch.testing.assert_close(out, reference_q_sample(x, e, ab), rtol=1e-6, atol=1e-6)
    assert kexue._C._set_cpu_stream_min_bytes(32 << 20) == 32 << 20


@pytest.mark.parametrize("dim", [16, 5, 20, 33])
def test_streamed_routing_gradient_equals_plain_one(dim, restore_cpu_isa):
    # dim 16: whole rows per block; 5: blocks start and end inside rows, with no 16-wide chunk;
    # 20 and 33: a block starting inside a row is followed by 16-wide chunks at unaligned entries
    g = torch.Generator().manual_seed(5)
    for isa in kexue._C.cpu_isas():
        kexue._C.set_cpu_isa(isa)
        for dtype in DTYPES:
            u = (torch.randn(3, 37, 6, dim, generator=g) * 0.3).to(dtype).requires_grad_()
            gv = torch.randn(3, 6, dim, generator=g).to(dtype)
            for detach in (False, True):
                def grad():
                    return torch.autograd.grad(dynamic_routing(u, 3, detach_routing=detach), u, gv)[0]

                assert_identical(*both_paths(grad), f"{isa} {dtype} dim {dim} detach {detach}")


def test_streaming_copy_at_every_offset_and_length(restore_cpu_isa):
    # The ops' outputs start on a cache line, so only this reaches the unaligned head and tail.
    for isa in kexue._C.cpu_isas():
        kexue._C.set_cpu_isa(isa)
        assert kexue._C._streaming_copy_errors() == 0, isa


def test_threshold_rejects_a_negative_size():
    with pytest.raises(ValueError, match="bytes must be >= 0"):
        kexue._C._set_cpu_stream_min_bytes(-1)
