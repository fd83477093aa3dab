"""torch.compile(fullgraph=True) runs the kexue ops forward and backward without graph breaks.
One compiled function covers the op family (each compile costs ~15 s on 2 cores)."""
import torch

from kexue.ops import actnorm, coupling, reference_actnorm, reference_coupling


def _flow_step(x, bias, log_scale, s, t, mask):
    h, ld1 = actnorm(x, bias, log_scale)
    y, ld2 = coupling(h, s, t, scale="sigmoid", mask=mask)
    z, ld3 = coupling(y, None, t, scale="none", reverse=True)
    return z, ld1 + ld2 + ld3


def _reference_step(x, bias, log_scale, s, t, mask):
    h, ld1 = reference_actnorm(x, bias, log_scale)
    y, ld2 = reference_coupling(h, s, t, scale="sigmoid", mask=mask)
    z, ld3 = reference_coupling(y, None, t, scale="none", reverse=True)
    return z, ld1 + ld2 + ld3


def test_compile_fullgraph_forward_backward():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    shape = (4, 3, 4, 4)
    x, s, t = (torch.randn(shape, generator=g) for _ in range(3))
    bias, log_scale = torch.randn(3, generator=g), torch.randn(3, generator=g) * 0.1
    mask = torch.arange(16).view(4, 4) % 2 == 0
    params = [v.requires_grad_() for v in (x, bias, log_scale, s, t)]
    compiled = torch.compile(_flow_step, fullgraph=True, backend="aot_eager")
    z, ld = compiled(*params, mask)
    (z.square().sum() + ld.sum()).backward()
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    zr, ldr = _reference_step(*params, mask)
    (zr.square().sum() + ldr.sum()).backward()
    torch.testing.assert_close(z, zr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld, ldr, rtol=1e-5, atol=1e-4)
    for a, p in zip(grads, params):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-4)


def test_compile_inductor_fullgraph():
    torch._dynamo.reset()
    x = torch.randn(8, 6)
    s, t = torch.randn(8, 6), torch.randn(8, 6)
    compiled = torch.compile(lambda x, s, t: coupling(x, s, t, scale="tanh", clamp=2.0), fullgraph=True)
    y, ld = compiled(x, s, t)
    yr, ldr = reference_coupling(x, s, t, scale="tanh", clamp=2.0)
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(ld, ldr)


def test_compile_whole_flow_fullgraph():
    """A whole Glow (dequantisation, ActNorm, LU 1×1 convs, couplings, squeezes, a split prior)
    compiles without graph breaks, forward and backward, and matches eager."""
    from kexue.models.flows import Glow

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Glow((1, 8, 8), 17, levels=2, depth=2, hidden=16)
    x = torch.randint(0, 17, (8, 1, 8, 8), dtype=torch.uint8)
    model.loss(x)  # data-dependent ActNorm init happens eagerly, once
    model.eval()  # deterministic dequantisation for the comparison
    compiled = torch.compile(model.flow, fullgraph=True, backend="aot_eager")
    z, ld = compiled(x)
    zr, ldr = model.flow(x)
    torch.testing.assert_close(z, zr)
    torch.testing.assert_close(ld, ldr)
    (z.square().sum() - ld.sum()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
