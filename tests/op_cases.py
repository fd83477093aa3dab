"""One valid call of every kexue operator (forward and backward ops), built for any batch size,
device and dtype: the shared input of the layout and fake-kernel contract tests."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence

import torch

from kexue.nn import RoPE

ops = torch.ops.kexue


@dataclass
class Case:
    name: str
    op: object
    build: Callable[[int, str, torch.dtype], List]  # (batch, device, dtype) -> args
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16)
    mutated: Sequence[int] = ()  # argument positions written in place
    # inputs the glue rejects: label -> args (of build(2, "cpu", float32)) -> bad args
    bad: Dict[str, Callable[[List], List]] = field(default_factory=dict)


def _set(args, i, value):
    out = list(args)
    out[i] = value
    return out


def _set_many(args, **positions):
    out = list(args)
    for key, value in positions.items():
        out[int(key[1:])] = value
    return out


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _rand(shape, device, dtype, scale=1.0, grad=False, seed=0):
    t = (scale * torch.randn(*shape, generator=_g(seed), dtype=torch.float64)).to(device=device, dtype=dtype)
    return t.requires_grad_(grad)


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def coupling(B, dev, dt):
    x, s, t = (_rand((B, 4, 3, 3), dev, dt, 0.3, True, seed=i) for i in range(3))
    mask = (torch.arange(36).reshape(1, 4, 3, 3) % 2 == 0).to(dev)
    return [x, s, t, mask, "exp", False, 0.0]


def coupling_backward(B, dev, dt):
    x, s, t, mask = coupling(B, dev, dt)[:4]
    g = _rand((B, 4, 3, 3), dev, dt, seed=5)
    gl = _rand((B,), dev, _acc(dt), seed=6)
    return [g, gl, x.detach(), s.detach(), t.detach(), mask, "exp", False, 0.0, [True, True, True]]


def actnorm(B, dev, dt):
    return [_rand((B, 4, 3, 3), dev, dt, grad=True), _rand((4,), dev, _acc(dt), grad=True, seed=1),
            _rand((4,), dev, _acc(dt), 0.1, True, seed=2), False]


def actnorm_backward(B, dev, dt):
    x, b, ls, _ = actnorm(B, dev, dt)
    return [_rand((B, 4, 3, 3), dev, dt, seed=3), _rand((B,), dev, _acc(dt), seed=4), x.detach(), b.detach(),
            ls.detach(), False, [True, True, True]]


def _wuv(rows, cols, dev, dt, seed=0):
    W = _rand((rows, cols), dev, dt, seed=seed)
    u = torch.nn.functional.normalize(_rand((rows,), dev, dt, seed=seed + 1), dim=0)
    v = torch.nn.functional.normalize(_rand((cols,), dev, dt, seed=seed + 2), dim=0)
    return W, u, v


def power_iteration(B, dev, dt):
    W, u, v = _wuv(max(B, 1) * 3, 7, dev, dt)
    return [W, u, v, 2, 1e-12]


def power_iteration_grouped(B, dev, dt):
    W1, u1, v1 = _wuv(max(B, 1) * 3, 7, dev, dt)
    W2, u2, v2 = _wuv(4, 5, dev, dt, seed=3)
    return [[W1, W2], [u1, u2], [v1, v2], 1, 1e-12]


def normalize_weight(B, dev, dt):
    W, u, v = _wuv(max(B, 1) * 3, 7, dev, dt)
    return [W.requires_grad_(), u, v, 0.5, False]


def normalize_weight_backward(B, dev, dt):
    W, u, v = _wuv(max(B, 1) * 3, 7, dev, dt)
    return [_rand(W.shape, dev, dt, seed=4), torch.tensor(0.3, device=dev, dtype=_acc(dt)), W, u, v, 0.5, True]


def logdet_series(B, dev, dt):
    return [_rand((B, 3, 3), dev, dt, 0.2, True), 4]


def logdet_series_backward(B, dev, dt):
    return [_rand((B,), dev, _acc(dt), seed=1), _rand((B, 3, 3), dev, dt, 0.2), 4]


def _mlp(B, dev, dt, grad):
    return [_rand((B, 3), dev, dt, grad=grad), _rand((8, 3), dev, dt, 0.3, grad, 1), _rand((8,), dev, dt, 0.1, grad, 2),
            _rand((3, 8), dev, dt, 0.3, grad, 3), _rand((3,), dev, dt, 0.1, grad, 4), _rand((B, 3), dev, dt, seed=5)]


def mlp_logdet(B, dev, dt):
    return _mlp(B, dev, dt, True) + [2, "lipswish", True]  # D = 3 > 2 terms: the products path, its state kept


def mlp_logdet_backward(B, dev, dt):
    x, W1, b1, W2, b2, v = _mlp(B, dev, dt, False)
    state = torch.ops.kexue.iresnet_mlp_logdet(x, W1, b1, W2, b2, v, 2, "elu", True)[1]
    return [_rand((B,), dev, _acc(dt), seed=7), x, W1, b1, W2, v, 2, "elu", [True, True, True, True], state]


def dynamic_routing(B, dev, dt):
    # 30 input capsules: the per-iteration state (3 iterations) is smaller than u_hat and kept
    return [_rand((B, 30, 3, 4), dev, dt, grad=True), 3, "sabour", False, True]


def dynamic_routing_backward(B, dev, dt):
    # The forward's saved state; one iteration, so that the state is smaller than u_hat and kept.
    u = _rand((B, 5, 3, 4), dev, dt)
    state = torch.ops.kexue.dynamic_routing(u, 1, "sabour", False, True)[2]
    return [_rand((B, 3, 4), dev, dt, seed=1), u, 1, "sabour", False, state]


def em_routing(B, dev, dt):
    # 48 input capsules: the history of 3 iterations is no larger than the votes and kept
    a = torch.rand(B, 48, generator=_g(1), dtype=torch.float64).to(dev, dt).requires_grad_()
    return [_rand((B, 48, 3, 4), dev, dt, grad=True), a, _rand((3,), dev, dt, 0.1, True, 2),
            _rand((3,), dev, dt, 0.1, True, 3), 3, 0.5, 1e-6, True]


def em_routing_backward(B, dev, dt):
    # The forward's kept history (no larger than the votes).
    V, a, bu, ba = (t.detach() for t in em_routing(B, dev, dt)[:4])
    state = torch.ops.kexue.em_routing(V, a, bu, ba, 3, 0.5, 1e-6, True)[2]
    return [_rand((B, 3, 4), dev, dt, seed=5), _rand((B, 3), dev, dt, seed=6), V, a, bu, ba, 3, 0.5, 1e-6, state]


def _abar(B, dev):
    return torch.linspace(0.2, 0.9, max(B, 1), dtype=torch.float64, device=dev)[:B]


def q_sample(B, dev, dt):
    return [_rand((B, 4, 3, 3), dev, dt, grad=True), _rand((B, 4, 3, 3), dev, dt, seed=1), _abar(B, dev)]


def ddpm_step(B, dev, dt):
    ac = torch.linspace(0.999, 0.05, 10, dtype=torch.float64, device=dev)
    x, eps, z = (_rand((B, 4, 3, 3), dev, dt, seed=i) for i in range(3))
    return [x, eps, torch.tensor(7), ac, z, None, "beta_tilde", 1.0, True]


def ddim_step(B, dev, dt):
    x, eps, z = (_rand((B, 4, 3, 3), dev, dt, seed=i) for i in range(3))
    return [x, eps, _abar(B, dev), torch.tensor(0.95, dtype=torch.float64), 0.5, z, None, None, True]


def ode_step(B, dev, dt):
    x, eps, eps2 = (_rand((B, 4, 3, 3), dev, dt, seed=i) for i in range(3))
    return [x, eps, torch.tensor(0.5, dtype=torch.float64), _abar(B, dev), eps2]


def _attention_extras(B, L, dev):
    inv, rs, inter = RoPE(4).kernel_args(L, dev)
    pos = torch.arange(L, device=dev).expand(B, L).contiguous()
    seg = (torch.arange(L, device=dev) >= 3).long().expand(B, L).contiguous()
    lengths = torch.full((B,), L - 1, device=dev, dtype=torch.long)
    return [inv, rs, inter, pos, True, seg, "unilm", lengths, None, 0.5]


def rope_attention(B, dev, dt):
    q = _rand((B, 2, 7, 4), dev, dt, grad=True)
    k, v = (_rand((B, 1, 7, 4), dev, dt, grad=True, seed=i) for i in (1, 2))
    return [q, k, v] + _attention_extras(B, 7, dev)


def rope_attention_backward(B, dev, dt):
    q, k, v, *rest = rope_attention(B, dev, dt)
    q, k, v = q.detach(), k.detach(), v.detach()
    out, lse = ops.rope_attention(q, k, v, *rest)
    return [_rand(out.shape, dev, dt, seed=3), q, k, v, out, lse] + rest


def apply_rope(B, dev, dt):
    inv, rs, inter, pos = _attention_extras(B, 7, dev)[:4]
    return [_rand((B, 3, 7, 4), dev, dt, grad=True), pos, inv, rs, inter, False]


FLOATS = (torch.float32, torch.float64)
CASES = [
    Case("coupling", ops.coupling.default, coupling, bad={
        "unknown scale": lambda a: _set(a, 4, "cube"),
        "0-d x": lambda a: _set_many(a, a0=a[0].sum(), a1=a[1].sum(), a2=a[2].sum(), a3=None),
        "integer x": lambda a: _set_many(a, a0=a[0].long(), a1=a[1].long(), a2=a[2].long()),
        "tanh clamp 0": lambda a: _set_many(a, a4="tanh", a6=0.0),
        "additive with s": lambda a: _set(a, 4, "none"),
        "exp without s": lambda a: _set(a, 1, None),
        "s of another dtype": lambda a: _set(a, 1, a[1].double()),
        "t of another shape": lambda a: _set(a, 2, a[2][:, :3]),
        "mask with more dims": lambda a: _set(a, 3, a[3][None]),
        "mask that does not broadcast": lambda a: _set(a, 3, a[3][..., :2]),
    }),
    Case("coupling_backward", ops.coupling_backward.default, coupling_backward, bad={
        "grad_out of another shape": lambda a: _set(a, 0, a[0][:, :3]),
        "grad_out of another dtype": lambda a: _set(a, 0, a[0].double()),
        "grad_logdet of another length": lambda a: _set(a, 1, a[1][:1]),
        "s of another shape": lambda a: _set(a, 3, a[3][:1]),
    }),
    Case("actnorm", ops.actnorm.default, actnorm, bad={
        "1-d x": lambda a: _set(a, 0, a[0][:, 0, 0, 0]),
        "integer x": lambda a: _set(a, 0, a[0].long()),
        "bias of another length": lambda a: _set(a, 1, a[1][:3]),
        "integer log_scale": lambda a: _set(a, 2, a[2].long()),
    }),
    Case("actnorm_backward", ops.actnorm_backward.default, actnorm_backward, bad={
        "grad_out of another shape": lambda a: _set(a, 0, a[0][:1]),
        "grad_logdet 2-d": lambda a: _set(a, 1, a[1][None]),
        "log_scale of another length": lambda a: _set(a, 4, a[4][:1]),
    }),
    Case("spectral_norm_power_iteration", ops.spectral_norm_power_iteration.default, power_iteration,
         mutated=(1, 2), bad={
             "3-d W": lambda a: _set(a, 0, a[0][None]),
             "u of another length": lambda a: _set(a, 1, a[1][:2]),
             "v of another dtype": lambda a: _set(a, 2, a[2].double()),
             "n_iter 0": lambda a: _set(a, 3, 0),
             "negative eps": lambda a: _set(a, 4, -1.0),
         }),
    Case("spectral_norm_power_iteration_grouped", ops.spectral_norm_power_iteration_grouped.default,
         power_iteration_grouped, mutated=(1, 2), bad={
             "lists of different lengths": lambda a: _set(a, 1, a[1][:1]),
             "second W of another dtype": lambda a: _set_many(a, a0=[a[0][0], a[0][1].double()],
                                                              a1=[a[1][0], a[1][1].double()],
                                                              a2=[a[2][0], a[2][1].double()]),
             "second v of another length": lambda a: _set(a, 2, [a[2][0], a[2][1][:2]]),
         }),
    Case("spectral_normalize_weight", ops.spectral_normalize_weight.default, normalize_weight, bad={
        "coeff 0": lambda a: _set(a, 3, 0.0),
        "u of another length": lambda a: _set(a, 1, a[1][:1]),
        "integer W": lambda a: _set(a, 0, a[0].detach().long()),
    }),
    Case("spectral_normalize_weight_backward", ops.spectral_normalize_weight_backward.default,
         normalize_weight_backward, bad={
             "grad_out of another shape": lambda a: _set(a, 0, a[0][:1]),
             "grad_sigma of two values": lambda a: _set(a, 1, a[1].repeat(2)),
             "infinite coeff": lambda a: _set(a, 5, float("inf")),
         }),
    Case("logdet_power_series", ops.logdet_power_series.default, logdet_series, FLOATS, bad={
        "non-square J": lambda a: _set(a, 0, a[0][:, :2]),
        "no terms": lambda a: _set(a, 1, 0),
        "integer J": lambda a: _set(a, 0, a[0].detach().long()),
    }),
    Case("logdet_power_series_backward", ops.logdet_power_series_backward.default, logdet_series_backward, FLOATS,
         bad={"grad of another length": lambda a: _set(a, 0, a[0][:1])}),
    Case("iresnet_mlp_logdet", ops.iresnet_mlp_logdet.default, mlp_logdet, FLOATS, bad={
        "3-d x": lambda a: _set(a, 0, a[0][None]),
        "W1 of another width": lambda a: _set(a, 1, a[1][:, :2]),
        "0-d W1": lambda a: _set(a, 1, a[1].detach().sum()),
        "b1 of another length": lambda a: _set(a, 2, a[2][:3]),
        "W2 transposed": lambda a: _set(a, 3, a[3].t()),
        "b2 of another length": lambda a: _set(a, 4, a[4][:1]),
        "v of another shape": lambda a: _set(a, 5, a[5][:1]),
        "integer v": lambda a: _set(a, 5, a[5].long()),
        "unknown activation": lambda a: _set(a, 7, "relu"),
    }),
    Case("iresnet_mlp_logdet_backward", ops.iresnet_mlp_logdet_backward.default, mlp_logdet_backward, FLOATS, bad={
        "grad of another length": lambda a: _set(a, 0, a[0][:1]),
        "no terms": lambda a: _set(a, 6, 0),
        "state of another length": lambda a: _set(a, 9, a[9][:5]),
        "1-d x": lambda a: _set(a, 1, a[1][0]),
    }),
    Case("dynamic_routing", ops.dynamic_routing.default, dynamic_routing, bad={
        "3-d u_hat": lambda a: _set(a, 0, a[0][0]),
        "no iterations": lambda a: _set(a, 1, 0),
        "unknown squash": lambda a: _set(a, 2, "pre"),
        "integer u_hat": lambda a: _set(a, 0, a[0].detach().long()),
    }),
    Case("dynamic_routing_backward", ops.dynamic_routing_backward.default, dynamic_routing_backward, bad={
        "grad_v of another shape": lambda a: _set(a, 0, a[0][:, :2]),
        "grad_v of another dtype": lambda a: _set(a, 0, a[0].double()),
        "state of another shape": lambda a: _set(a, 5, torch.zeros(a[1].shape[0], 7, dtype=a[5].dtype,
                                                                    device=a[5].device)),
    }),
    Case("em_routing", ops.em_routing.default, em_routing, FLOATS, bad={
        "half votes": lambda a: _set(a, 0, a[0].detach().half()),
        "3-d votes": lambda a: _set(a, 0, a[0][0]),
        "eps 0": lambda a: _set(a, 6, 0.0),
        "no iterations": lambda a: _set(a, 4, 0),
        "a_in of another shape": lambda a: _set(a, 1, a[1][:, :2]),
        "beta_u of another length": lambda a: _set(a, 2, a[2][:2]),
        "beta_a of another dtype": lambda a: _set(a, 3, a[3].double()),
    }),
    Case("em_routing_backward", ops.em_routing_backward.default, em_routing_backward, FLOATS, bad={
        "grad_mu of another shape": lambda a: _set(a, 0, a[0][:, :2]),
        "grad_a of another shape": lambda a: _set(a, 1, a[1][:1]),
        "state of another shape": lambda a: _set(a, 9, torch.zeros(a[2].shape[0], 7, dtype=a[2].dtype,
                                                                    device=a[2].device)),
    }),
    Case("q_sample", ops.q_sample.default, q_sample, bad={
        "0-d x0": lambda a: _set_many(a, a0=a[0].sum(), a1=a[1].sum()),
        "noise of another shape": lambda a: _set(a, 1, a[1][:1]),
        "integer alpha_bar": lambda a: _set(a, 2, (a[2] * 10).long()),
        "alpha_bar of another length": lambda a: _set(a, 2, torch.cat([a[2], a[2]])),
    }),
    Case("ddpm_step", ops.ddpm_step.default, ddpm_step, bad={
        "eps of another dtype": lambda a: _set(a, 1, a[1].double()),
        "clip 0": lambda a: _set(a, 7, 0.0),
        "unknown variance": lambda a: _set(a, 6, "sigma"),
        "float t": lambda a: _set(a, 2, torch.tensor(7.0)),
        "2-d schedule": lambda a: _set(a, 3, a[3][None]),
        "t of another length": lambda a: _set(a, 2, torch.tensor([1, 2, 3])),
        "noise of another shape": lambda a: _set(a, 4, a[4][:1]),
    }),
    Case("ddim_step", ops.ddim_step.default, ddim_step, bad={
        "negative eta": lambda a: _set(a, 4, -0.5),
        "eta 0 with noise": lambda a: _set(a, 4, 0.0),
        "alpha_bar_t of another length": lambda a: _set(a, 2, torch.cat([a[2], a[2]])),
    }),
    Case("ode_step", ops.ode_step.default, ode_step, bad={
        "eps_next of another shape": lambda a: _set(a, 4, a[4][:1]),
        "integer alpha_bar_next": lambda a: _set(a, 3, (a[3] * 10).long()),
    }),
    Case("rope_attention", ops.rope_attention.default, rope_attention, bad={
        "3-d q": lambda a: _set(a, 0, a[0][0]),
        "k of another dtype": lambda a: _set(a, 1, a[1].double()),
        "v of another shape": lambda a: _set(a, 2, a[2][:, :, :3]),
        "k of another head dim": lambda a: _set_many(a, a1=a[1][..., :2], a2=a[2][..., :2]),
        "3 query heads on 2 kv heads": lambda a: _set_many(a, a0=torch.cat([a[0], a[0][:, :1]], 1),
                                                           a1=torch.cat([a[1], a[1]], 1), a2=torch.cat([a[2], a[2]], 1)),
        "longer q with RoPE": lambda a: _set(a, 0, torch.cat([a[0], a[0]], 2)),
        "scale 0": lambda a: _set(a, 12, 0.0),
        "odd head dim with RoPE": lambda a: _set_many(a, a0=a[0][..., :3], a1=a[1][..., :3], a2=a[2][..., :3]),
        "inv_freq of another length": lambda a: _set(a, 3, a[3][:1]),
        "positions of another length": lambda a: _set(a, 6, a[6][:, :3]),
        "segment_ids of another length": lambda a: _set(a, 8, a[8][:, :3]),
        "unknown mask rule": lambda a: _set(a, 9, "prefix"),
        "key_lengths of another length": lambda a: _set(a, 10, a[10][:1]),
        "float key_lengths": lambda a: _set(a, 10, a[10].float()),
        "integer attn_mask": lambda a: _set(a, 11, torch.ones(7, 7, dtype=torch.long)),
        "attn_mask of another shape": lambda a: _set(a, 11, torch.ones(7, 6, dtype=torch.bool)),
    }),
    Case("rope_attention_backward", ops.rope_attention_backward.default, rope_attention_backward, bad={
        "grad_out of another shape": lambda a: _set(a, 0, a[0][:, :1]),
        "out of another dtype": lambda a: _set(a, 4, a[4].double()),
        "lse of another dtype": lambda a: _set(a, 5, a[5].double()),
    }),
    Case("apply_rope", ops.apply_rope.default, apply_rope, bad={
        "1-d x": lambda a: _set(a, 0, a[0][0, 0, 0]),
        "integer x": lambda a: _set(a, 0, a[0].detach().long()),
        "inv_freq of another length": lambda a: _set(a, 2, a[2][:1]),
        "positions of another length": lambda a: _set(a, 1, a[1][:, :2]),
    }),
]


# ---- input layouts: the same values (or, for "expanded", values repeated along dim 0) ----------

def _channels_last(t):
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _transposed(t):
    return t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.dim() >= 2 else t


def _expanded(t):
    return t[:1].expand_as(t) if t.dim() >= 1 and t.shape[0] > 0 else t


def _offset(t):
    if t.numel() == 0:
        return t
    base = torch.empty(t.numel() + 3, dtype=t.dtype, device=t.device)
    return base[3:].view(t.shape).copy_(t)


LAYOUTS = {"contiguous": lambda t: t, "channels_last": _channels_last, "transposed": _transposed,
           "expanded": _expanded, "offset": _offset}


def with_layout(args, layout, mutated=()):
    """args with every tensor (lists included) in `layout`; in-place arguments are not expanded
    (an expanded tensor cannot be written)."""
    fn = LAYOUTS[layout]

    def one(t, pos):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        if layout == "expanded" and pos in mutated:
            return t
        out = fn(t.detach()) if layout != "contiguous" else t.detach()
        if layout != "contiguous":
            out = out.clone() if layout == "expanded" and pos in mutated else out
        return out.requires_grad_(t.requires_grad) if t.requires_grad and out.is_leaf else out

    result = []
    for pos, a in enumerate(args):
        if isinstance(a, list) and a and isinstance(a[0], torch.Tensor):
            result.append([one(t, pos) for t in a])
        else:
            result.append(one(a, pos))
    return result
