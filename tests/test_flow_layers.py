"""Every flow layer: exact inverse, log-det equal to the autograd Jacobian's, bad input."""
import copy
import io

import pytest
import torch

from kexue.nn import (
    ActNorm, Dequantize, Flow, HalfCoupling, InvConv1x1, Logit, MaskedCoupling, Permute, Reverse,
    Scaling, Split, Squeeze, channel_mask, checkerboard_mask,
)

torch.set_default_dtype(torch.float32)


def jacobian_logdet(fn, x):
    """log|det ∂fn(x)/∂x| per sample by autograd (x: [B, ...], fn maps samples independently)."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.view_as(xi)).flatten(), xi.flatten())
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def randomize(module, seed=0, scale=0.3):
    """Move every zero-initialised parameter off zero so the layer is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def layers_under_test():
    img, vec = (4, 4, 4), (6,)
    return {
        "actnorm_img": (ActNorm(4), img),
        "actnorm_vec": (ActNorm(6), vec),
        "scaling": (Scaling(6), vec),
        "invconv_img": (InvConv1x1(4, generator=torch.Generator().manual_seed(1)), img),
        "invconv_vec": (InvConv1x1(6, generator=torch.Generator().manual_seed(1)), vec),
        "masked_checker_img": (MaskedCoupling(checkerboard_mask(img), hidden=8), img),
        "masked_channel_img": (MaskedCoupling(channel_mask(img, 1), hidden=8, scale="tanh", clamp=2.0), img),
        "masked_vec": (MaskedCoupling(checkerboard_mask(vec), hidden=8, scale="sigmoid"), vec),
        "half_img": (HalfCoupling(img, hidden=8), img),
        "half_img_additive": (HalfCoupling(img, hidden=8, scale="none", swap=True), img),
        "half_vec_exp": (HalfCoupling(vec, hidden=8, scale="exp"), vec),
        "squeeze": (Squeeze(), (2, 4, 4)),
        "permute": (Permute(6, generator=torch.Generator().manual_seed(0)), vec),
        "reverse": (Reverse(6), vec),
        "logit": (Logit(0.05), vec),
    }


@pytest.mark.parametrize("name", list(layers_under_test()))
def test_inverse_and_logdet(name):
    layer, shape = layers_under_test()[name]
    layer = randomize(layer.double())
    g = torch.Generator().manual_seed(2)
    x = torch.rand((3,) + shape, generator=g, dtype=torch.float64)
    if name != "logit":
        x = 2 * x - 1
    layer.eval()
    y, ld = layer(x)
    x2, ld_inv = layer.inverse(y)
    assert (x2 - x).abs().max() < 1e-10
    torch.testing.assert_close(ld + ld_inv, torch.zeros_like(ld), atol=1e-10, rtol=0)
    torch.testing.assert_close(ld, jacobian_logdet(lambda v: layer(v)[0], x), atol=1e-8, rtol=1e-8)
    # fp32 round trip
    l32 = copy.deepcopy(layer).float()
    y32, _ = l32(x.float())
    assert (l32.inverse(y32)[0] - x.float()).abs().max() < 1e-5


@pytest.mark.parametrize("shape", [(4, 2, 2), (6,)])
def test_split(shape):
    split = randomize(Split(shape, hidden=8).double())
    x = torch.randn((3,) + shape, dtype=torch.float64)
    h, eps, ld = split(x)
    assert h.shape[1] == shape[0] // 2 and eps.shape[1] == shape[0] - shape[0] // 2
    x2, ld_inv = split.inverse(h, eps)
    assert (x2 - x).abs().max() < 1e-10
    torch.testing.assert_close(ld + ld_inv, torch.zeros_like(ld))
    joint = lambda v: torch.cat([t.flatten(1) for t in split(v)[:2]], 1)
    torch.testing.assert_close(ld, jacobian_logdet(joint, x), atol=1e-8, rtol=1e-8)


def test_flow_container_multiscale_logdet_and_inverse():
    shape = (1, 4, 4)
    layers = [Squeeze(), ActNorm(4), InvConv1x1(4), HalfCoupling((4, 2, 2), hidden=8), Split((4, 2, 2), hidden=8),
              HalfCoupling((2, 2, 2), hidden=8, scale="exp")]
    flow = randomize(Flow(layers, shape).double())
    flow.eval()
    x = torch.randn(3, *shape, dtype=torch.float64)
    z, ld = flow(x)
    assert z.shape == (3, 16)
    x2, ld_inv = flow.inverse_with_logdet(z)
    assert (x2 - x).abs().max() < 1e-10
    torch.testing.assert_close(ld + ld_inv, torch.zeros_like(ld))
    torch.testing.assert_close(ld, jacobian_logdet(lambda v: flow(v)[0], x), atol=1e-8, rtol=1e-8)
    lp = flow.log_prob(x)
    torch.testing.assert_close(lp, flow.prior.log_prob(z) + ld)
    torch.testing.assert_close(flow.bits_per_dim(x), -lp / (16 * torch.log(torch.tensor(2.0, dtype=torch.float64))))


def test_flow_sampling_seeded_and_temperature():
    flow = randomize(Flow([HalfCoupling((4,), hidden=8), Reverse(4), HalfCoupling((4,), hidden=8)], (4,)))
    a = flow.sample(5, generator=torch.Generator().manual_seed(3))
    b = flow.sample(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (5, 4)
    cold = flow.sample(2000, temperature=0.0, generator=torch.Generator().manual_seed(4))
    assert cold.std(0).max() < 1e-6  # T = 0: every sample is the image of z = 0


def test_actnorm_data_init_and_checkpoint():
    x = 3 + 2 * torch.randn(64, 5, 4, 4)
    act = ActNorm(5)
    y, _ = act(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(5), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3), unbiased=False), torch.ones(5), atol=1e-3, rtol=0)
    buf = io.BytesIO()
    torch.save(act.state_dict(), buf)
    fresh = ActNorm(5)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    before = fresh.bias.detach().clone()
    fresh(torch.randn(8, 5, 4, 4) * 10)  # must not re-initialise
    assert torch.equal(fresh.bias.detach(), before) and bool(fresh.initialized)
    # not initialised in eval mode either
    cold = ActNorm(5).eval()
    cold(x)
    assert not bool(cold.initialized)


def test_invconv_lu_logdet_and_inverse_cache():
    conv = InvConv1x1(5)
    w = conv.weight(torch.float64)
    x = torch.randn(2, 5, 3, 3)
    _, ld = conv(x)
    torch.testing.assert_close(ld.double(), torch.linalg.slogdet(w)[1].expand(2) * 9, rtol=1e-6, atol=1e-5)
    with torch.no_grad():
        y, _ = conv(x)
        first = conv._inverse_weight()
        assert conv._inverse_weight() is first  # cached
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    conv(x)[0].sum().backward()
    opt.step()
    with torch.no_grad():
        assert conv._inverse_weight() is not first  # an optimizer step invalidates it
        y, _ = conv(x)
        assert (conv.inverse(y)[0] - x).abs().max() < 1e-5


def test_dequantize():
    deq = Dequantize(17)
    x = torch.randint(0, 17, (4, 1, 8, 8), dtype=torch.uint8)
    y, ld = deq(x)
    assert y.min() >= 0 and y.max() < 1
    torch.testing.assert_close(ld, torch.full((4,), -64 * torch.log(torch.tensor(17.0)).item()))
    assert torch.equal(deq.inverse(y)[0], x.float())
    deq.eval()
    assert torch.equal(deq(x)[0], deq(x)[0])  # no noise in eval mode


def test_bad_inputs():
    with pytest.raises(ValueError, match="even"):
        HalfCoupling((3, 4, 4))
    with pytest.raises(ValueError, match="even"):
        Split((5,))
    with pytest.raises(ValueError, match="height and width must be even"):
        Squeeze()(torch.randn(2, 1, 5, 4))
    with pytest.raises(ValueError, match="height and width must be even"):
        Flow([Squeeze()], (1, 3, 4))
    flow = Flow([Reverse(4)], (4,))
    with pytest.raises(ValueError, match=r"expected inputs of shape \[B, 4\]"):
        flow(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"expected z of shape \[B, 4\]"):
        flow.inverse(torch.randn(2, 3))
    with pytest.raises(ValueError, match="context of shape"):
        MaskedCoupling(checkerboard_mask((4,)), context_features=3)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="prior must be one of"):
        Flow([], (4,), prior="cauchy")


def test_conditional_coupling_uses_context():
    layer = randomize(HalfCoupling((4,), hidden=8, context_features=3))
    x = torch.randn(5, 4)
    c1, c2 = torch.randn(5, 3), torch.randn(5, 3)
    y1, _ = layer(x, c1)
    y2, _ = layer(x, c2)
    assert not torch.allclose(y1, y2)
    assert (layer.inverse(y1, c1)[0] - x).abs().max() < 1e-5
