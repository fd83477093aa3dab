"""Every kexue.nn layer under torch.compile(fullgraph=True, dynamic=True): forward (and inverse for
flow layers) and backward without a graph break, equal to eager, and a change of batch size
compiles nothing new."""
import copy

import pytest
import torch
import torch.nn as nn
from torch._dynamo.utils import counters

import kexue.nn as K
from kexue.nn.iresnet import InvertibleResidualConv

BATCHES = (7, 11)  # sizes no layer dimension shares (dynamo would identify equal sizes)


def _img(n, c=4, hw=4):
    return torch.randn(n, c, hw, hw)


def _spectral_norm():
    lin = K.spectral_norm(nn.Linear(5, 3))
    return lin, lambda n: torch.randn(n, 5)


def _flow():
    layers = [K.ActNorm(4), K.InvConv1x1(4), K.HalfCoupling((4, 4, 4), hidden=8), K.Squeeze(), K.Split((16, 2, 2), hidden=8)]
    return K.Flow(layers, (4, 4, 4)), _img


FLOW_LAYERS = {
    "ActNorm": (lambda: K.ActNorm(4), _img),
    "Scaling": (lambda: K.Scaling(6), lambda n: torch.randn(n, 6)),
    "HalfCoupling": (lambda: K.HalfCoupling((4, 4, 4), hidden=8), _img),
    "MaskedCoupling": (lambda: K.MaskedCoupling(K.checkerboard_mask((4, 4, 4)), hidden=8), _img),
    "InvConv1x1": (lambda: K.InvConv1x1(4), _img),
    "InvertibleResidualMLP": (lambda: K.InvertibleResidualMLP(3, hidden=8, n_terms=3), lambda n: torch.randn(n, 3)),
    "ResidualFlowMLP": (lambda: K.ResidualFlowMLP(3, hidden=8), lambda n: torch.randn(n, 3)),
    "Split": (lambda: K.Split((4, 4, 4), hidden=8), _img),
    "InvertibleResidualConv": (lambda: InvertibleResidualConv((4, 4, 4), hidden=8, n_terms=3), _img),
    "Logit": (lambda: K.Logit(), lambda n: torch.rand(n, 5) * 0.8 + 0.1),
    "Flatten": (lambda: K.Flatten((4, 4, 4)), _img),
    "Permute": (lambda: K.Permute(6), lambda n: torch.randn(n, 6)),
    "Reverse": (lambda: K.Reverse(6), lambda n: torch.randn(n, 6)),
    "Squeeze": (lambda: K.Squeeze(), _img),
}
# Inverses by fixed-point iteration stop when the residual is small: data-dependent control flow,
# compiled with graph breaks (not fullgraph) or run eagerly. Their forward passes compile in full.
EAGER_INVERSE = {"InvertibleResidualMLP", "ResidualFlowMLP", "InvertibleResidualConv"}
LAYERS = {
    "MLP": (lambda: K.MLP(5, 3, hidden=8), lambda n: torch.randn(n, 5)),
    "ConvNet": (lambda: K.ConvNet(4, 6, hidden=8), _img),
    "Dequantize": (lambda: K.Dequantize(17), lambda n: torch.randint(0, 17, (n, 1, 4, 4), dtype=torch.uint8)),
    "SpectralNorm": _spectral_norm,
    "RoPE": (lambda: K.RoPE(8, scaling={"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4}),
             lambda n: torch.randn(n, 2, 6, 8)),
    "MultiHeadAttention": (lambda: K.MultiHeadAttention(16, 4, kv_heads=2, rope=K.RoPE(4)),
                           lambda n: torch.randn(n, 6, 16)),
    "FeedForward": (lambda: K.FeedForward(16), lambda n: torch.randn(n, 6, 16)),
    "TransformerBlock": (lambda: K.TransformerBlock(16, heads=4, kv_heads=2, rope=K.RoPE(4)),
                         lambda n: torch.randn(n, 6, 16)),
    "TransformerStack": (lambda: K.TransformerStack(16, heads=4, layers=2, norm="deepnorm", rope=K.RoPE(4)),
                         lambda n: torch.randn(n, 6, 16)),
    "MLMHead": (lambda: K.MLMHead(16, 30), lambda n: torch.randn(n, 6, 16)),
    # training mode: random masking inside the graph (same seed eager and compiled)
    "MLMEmbeddingMasker": (lambda: K.MLMEmbeddingMasker(nn.Embedding(30, 16), 1, special_token_ids=(0,)),
                           lambda n: torch.randint(2, 30, (n, 9))),
    "Flow": _flow,
}


def _tensors(out):
    return [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]


def _build(table, name):
    entry = table[name]
    module, data = entry() if callable(entry) else (entry[0](), entry[1])
    return module.eval() if name == "Dequantize" else module, data


def _check_compiled(layer, fn, data):
    """fn compiled against eager for both batch sizes, from the same layer state (power
    iterations update buffers); gradients flow; one graph for both."""
    torch._dynamo.reset()
    counters.clear()
    params = list(layer.parameters())
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    for n in BATCHES:
        torch.manual_seed(n)
        xs = data(n)
        xs = xs if isinstance(xs, tuple) else (xs,)
        xs = tuple(x.requires_grad_() if x.dtype.is_floating_point else x for x in xs)
        wrt = [p for p in params if p.requires_grad] + [x for x in xs if x.requires_grad]
        state = copy.deepcopy(layer.state_dict())
        results = []
        for run in (fn, compiled):  # the same layer state and random draws for both
            layer.load_state_dict(state)
            torch.manual_seed(0)
            outs = _tensors(run(*xs))
            total = sum(o.float().sum() for o in outs)
            grads = torch.autograd.grad(total, wrt, allow_unused=True) if total.requires_grad else ()
            results.append((outs, grads))
        (want, want_grads), (got, got_grads) = results
        for w, g in zip(want, got):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        for w, g in zip(want_grads, got_grads):
            assert (w is None) == (g is None)
            if w is not None:
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


@pytest.mark.parametrize("name", sorted(FLOW_LAYERS))
def test_flow_layer_compiles_forward_and_inverse(name):
    layer, data = _build(FLOW_LAYERS, name)
    torch.manual_seed(1)
    layer(data(5))  # data-dependent initialisation (ActNorm) happens eagerly, once
    _check_compiled(layer, lambda x: layer(x), data)
    if name in EAGER_INVERSE:
        return
    with torch.no_grad():
        outputs = layer(data(max(BATCHES)))[:-1]  # what inverse takes: all but the log-det
    _check_compiled(layer, lambda *ys: layer.inverse(*ys), lambda n: tuple(y[:n].clone() for y in outputs))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_compiles(name):
    layer, data = _build(LAYERS, name)
    torch.manual_seed(1)
    layer(data(5))
    _check_compiled(layer, lambda x: layer(x), data)
