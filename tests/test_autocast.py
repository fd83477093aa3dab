"""torch.autocast (bfloat16 on the CPU) around training steps and sampling steps: the ops take
inputs of mixed precision (a network's bf16 outputs meet fp32 data) by promoting them like
torch's own ops, and log-dets and attention statistics stay in fp32."""
import torch

from kexue.data import get_dataset
from kexue.nn import RoPE, TransformerBlock
from kexue.ops import attention as A
from kexue.ops import coupling, ddpm_step, em_routing

AMP = dict(device_type="cpu", dtype=torch.bfloat16)


def test_glow_step_under_autocast_keeps_fp32_logdets():
    from kexue.models.flows import Glow

    torch.manual_seed(0)
    x = get_dataset("digits", "train", n=16).x.clone()
    model = Glow((1, 8, 8), 17, levels=2, depth=2, hidden=16)
    model.loss(x)  # ActNorm's data-dependent init, in fp32
    with torch.autocast(**AMP):
        z, logdet = model.flow(x)
        loss = model.loss(x)["loss"]
    assert z.dtype == torch.bfloat16 and logdet.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_coupling_on_fp32_data_with_a_bf16_conditioner():
    # RealNVP on 2-D data: x stays fp32, the MLP's s and t come out in bf16.
    from kexue.models.flows import RealNVP

    torch.manual_seed(0)
    model = RealNVP((2,), None)
    x = get_dataset("moons", "train", n=32).x.clone()
    with torch.autocast(**AMP):
        loss = model.loss(x)["loss"]
        y, ld = coupling(x, x.bfloat16(), x.bfloat16())
    assert torch.isfinite(loss) and y.dtype == torch.float32 and ld.dtype == torch.float32
    loss.backward()


def test_transformer_block_and_attention_statistics():
    torch.manual_seed(0)
    block = TransformerBlock(32, heads=4, kv_heads=2, rope=RoPE(8))
    x = torch.randn(3, 9, 32)
    with torch.autocast(**AMP):
        y = block(x)
        q = torch.nn.functional.linear(torch.randn(2, 4, 9, 8), torch.randn(8, 8))  # bf16 under autocast
        k = v = torch.nn.functional.linear(torch.randn(2, 2, 9, 8), torch.randn(8, 8))
        out, lse = torch.ops.kexue.rope_attention(q, k, v, None, 1.0, False, None, True, None, "unilm", None, None,
                                                  8 ** -0.5)
        mixed = A.rope_attention(q, k.float(), v.float(), causal=True)  # bf16 queries on an fp32 cache
    assert torch.isfinite(y).all()
    y.float().square().mean().backward()
    assert all(p.grad is not None for p in block.parameters())
    assert q.dtype == torch.bfloat16 and out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert mixed.dtype == torch.float32


def test_ddpm_training_and_sampling_steps():
    from kexue.models.diffusion import build_ddpm

    torch.manual_seed(0)
    data = get_dataset("moons", "train", n=64)
    model = build_ddpm(data, T=50, hidden=16, blocks=1)
    with torch.autocast(**AMP):
        out = model.loss(data.x[:16].clone())
        loss = out["loss"] if isinstance(out, dict) else out
        x_t = torch.randn(16, 2)
        eps = torch.nn.functional.linear(x_t, torch.eye(2))  # the denoiser's bf16 output
        x_prev = ddpm_step(x_t, eps, 10, model.schedule.alphas_cumprod, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    assert eps.dtype == torch.bfloat16 and x_prev.dtype == torch.float32 and torch.isfinite(x_prev).all()


def test_em_routing_runs_in_fp32_under_autocast():
    votes = torch.randn(2, 6, 3, 16)
    a_in = torch.rand(2, 6)
    with torch.autocast(**AMP):
        votes_bf16 = torch.nn.functional.linear(votes, torch.eye(16))  # EM routing has no bf16 kernel
        mu, a_out = em_routing(votes_bf16, a_in, 0.1, 0.2, 3)
    assert mu.dtype == torch.float32 and a_out.dtype == torch.float32


def test_compiled_glow_step_under_autocast():
    from kexue.models.flows import Glow

    torch.manual_seed(0)
    x = get_dataset("digits", "train", n=16).x.clone()
    model = Glow((1, 8, 8), 17, levels=2, depth=2, hidden=16)
    model.loss(x)
    model.eval()  # deterministic dequantisation: eager and compiled see the same input
    torch._dynamo.reset()
    step = torch.compile(model.loss, fullgraph=True, backend="aot_eager")
    with torch.autocast(**AMP):
        eager = model.loss(x)["loss"]
        loss = step(x)["loss"]
    torch.testing.assert_close(loss, eager, rtol=1e-2, atol=1e-2)
    loss.backward()
