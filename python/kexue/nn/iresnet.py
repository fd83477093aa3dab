"""Invertible residual blocks (i-ResNet, Behrmann et al. 2019; Residual Flows, Chen et al. 2019):
``y = x + g(x)`` with ``g`` contractive through spectral normalisation, inverted by fixed-point
iteration, with the log-det from the power series of ``J_g``."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from kexue.nn.base import FlowLayer, Tensor
from kexue.nn.spectral_norm import spectral_norm
from kexue.ops.iresnet import ACTIVATIONS, activation_fn, iresnet_mlp_logdet, logdet_power_series


class InvertibleResidualMLP(FlowLayer):
    """``g(x) = W2·act(W1 x + b1) + b2`` with ``‖W1‖, ‖W2‖ ≤ coeff`` (soft spectral norm), so
    ``Lip(g) ≤ coeff² < 1`` for 1-Lipschitz activations (ELU, LipSwish, tanh).

    log-det of ``I + J_g``: ``logdet="exact"`` sums the series with exact traces of the explicit
    Jacobian (small D), ``"hutchinson"`` estimates it with one Gaussian probe per sample through
    the fused ``kexue.ops.iresnet_mlp_logdet``; ``"auto"`` picks exact for D ≤ 16. ``n_terms``
    truncates the series. The inverse iterates ``x ← y − g(x)`` until the update is below
    ``inverse_tol`` or ``inverse_max_iter`` steps; ``last_inverse`` reports iterations and residual.
    """

    def __init__(self, dim: int, hidden: int = 128, activation: str = "lipswish", coeff: float = 0.9,
                 n_power_iterations: int = 1, n_terms: int = 10, logdet: str = "auto",
                 inverse_tol: float = 1e-6, inverse_max_iter: int = 200):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"InvertibleResidualMLP: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if not 0 < coeff < 1:
            raise ValueError(f"InvertibleResidualMLP: coeff must be in (0, 1) for an invertible block, got {coeff}")
        if logdet not in ("auto", "exact", "hutchinson"):
            raise ValueError(f"InvertibleResidualMLP: logdet must be 'auto', 'exact' or 'hutchinson', got {logdet!r}")
        self.lin1 = spectral_norm(nn.Linear(dim, hidden), coeff=coeff, n_power_iterations=n_power_iterations)
        self.lin2 = spectral_norm(nn.Linear(hidden, dim), coeff=coeff, n_power_iterations=n_power_iterations)
        self.activation, self.act = activation, activation_fn(activation)
        self.n_terms = n_terms
        self.exact = logdet == "exact" or (logdet == "auto" and dim <= 16)
        self.inverse_tol, self.inverse_max_iter = inverse_tol, inverse_max_iter
        self.last_inverse = {"iterations": 0, "residual": float("nan")}

    def _weights(self):
        return self.lin1.weight, self.lin1.bias, self.lin2.weight, self.lin2.bias

    def g(self, x: Tensor, weights=None) -> Tensor:
        W1, b1, W2, b2 = weights or self._weights()
        return torch.nn.functional.linear(self.act(torch.nn.functional.linear(x, W1, b1)), W2, b2)

    def jacobian(self, x: Tensor, weights=None) -> Tensor:
        """Explicit ``J_g(x)`` [B, D, D] = W2 diag(act'(W1 x + b1)) W1 (differentiable)."""
        W1, b1, W2, _ = weights or self._weights()
        return torch.einsum("dh,bh,hk->bdk", W2, self.act_slope(x, W1, b1), W1)

    def act_slope(self, x: Tensor, W1: Tensor, b1: Tensor) -> Tensor:
        """act'(W1 x + b1) [B, H], the activation differentiated elementwise by torch.func
        (differentiable when the pre-activation is, and traceable by torch.compile, which
        torch.autograd.grad is not)."""
        h = torch.nn.functional.linear(x, W1, b1)
        # The activation is elementwise: the gradient of its sum is act' at every element.
        return torch.func.grad(lambda t: self.act(t).sum())(h)

    def logdet(self, x: Tensor, weights=None) -> Tensor:
        weights = weights or self._weights()
        if self.exact:
            return logdet_power_series(self.jacobian(x, weights), self.n_terms)
        W1, b1, W2, b2 = weights
        v = torch.randn_like(x)
        return iresnet_mlp_logdet(x, W1, b1, W2, b2, v, self.n_terms, self.activation)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x`` [B, D] → ``(y, logdet)`` with ``y = x + g(x)`` and ``logdet`` [B] the power series
        of log det(I + J_g(x)) truncated at ``n_terms``, with exact traces or a Hutchinson estimate
        (one Gaussian probe per sample, unbiased for the truncated series). In training, each
        spectral norm first takes ``n_power_iterations`` power-iteration steps."""
        weights = self._weights()  # one power-iteration step per weight per forward in training
        return x + self.g(x, weights), self.logdet(x, weights)

    @torch.no_grad()
    def _fixed_point(self, y: Tensor, weights) -> Tensor:
        x, residual, it = y.clone(), float("inf"), 0
        for it in range(1, self.inverse_max_iter + 1):
            x_new = y - self.g(x, weights)
            residual = (x_new - x).abs().max().item() if x.numel() else 0.0
            x = x_new
            if residual < self.inverse_tol:
                break
        self.last_inverse = {"iterations": it, "residual": residual}
        return x

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``y`` [B, D] → ``(x, logdet)`` by the fixed-point iteration ``x ← y − g(x)`` from
        ``x = y``, which converges geometrically at rate Lip(g) ≲ coeff² < 1. It stops when the
        largest absolute update is below ``inverse_tol`` or after ``inverse_max_iter`` steps, with
        no error raised either way: ``last_inverse`` holds the iterations and that last update.
        The error left is at most Lip(g)/(1 − Lip(g)) (≈ 4 for coeff = 0.9) times the ℓ2 size of
        the last update. ``logdet`` [B] is minus the forward log-det estimate at the recovered x
        (a fresh draw for stochastic estimators). Not differentiable: no gradient flows through
        the iteration or to the weights."""
        weights = tuple(w.detach() for w in self._weights())
        x = self._fixed_point(y, weights)
        return x, -self.logdet(x, weights)


COMPILED_ROULETTE_TAIL = 1e-6


class ResidualFlowMLP(InvertibleResidualMLP):
    """Residual Flows' block: an unbiased log-det estimate by the Russian-roulette series and its
    gradient by the Neumann series (no graph through the power series, so memory does not grow
    with the number of terms). N = ``n_exact`` + Geometric(``roulette_p``) terms are taken per
    forward in training; each term is reweighted by 1/P(N ≥ k). In eval mode the series is
    truncated at ``n_terms`` like the parent block."""

    def __init__(self, dim: int, hidden: int = 128, activation: str = "lipswish", coeff: float = 0.9,
                 n_exact: int = 2, roulette_p: float = 0.5, **kw):
        super().__init__(dim, hidden, activation, coeff, **kw)
        if not 0 < roulette_p < 1:
            raise ValueError(f"ResidualFlowMLP: roulette_p must be in (0, 1), got {roulette_p}")
        self.n_exact, self.roulette_p = n_exact, roulette_p

    def _compiled_terms(self) -> int:
        """Terms past n_exact whose omission loses at most COMPILED_ROULETTE_TAIL of probability."""
        return max(1, math.ceil(math.log(COMPILED_ROULETTE_TAIL) / math.log1p(-self.roulette_p)))

    def _survival(self, k: int) -> float:
        """P(N ≥ k) for N = n_exact + Geometric(p) (support 0, 1, ...)."""
        return 1.0 if k <= self.n_exact else (1 - self.roulette_p) ** (k - self.n_exact)

    def logdet(self, x: Tensor, weights=None) -> Tensor:
        """log det(I + J_g(x)) [B]: in training the Russian-roulette estimate (value) with the
        Neumann-series gradient; in eval the parent's truncated series."""
        if not self.training:
            return super().logdet(x, weights)
        W1, b1, W2, _ = weights or self._weights()
        n = self.n_exact + torch.distributions.Geometric(probs=torch.tensor(self.roulette_p)).sample()
        # Eagerly the loop runs exactly n terms. A compiled graph cannot loop a random number of
        # times: it runs enough terms past n_exact that P(N > them) <= COMPILED_ROULETTE_TAIL and
        # masks those beyond n (the estimator then drops that tail).
        terms = self.n_exact + self._compiled_terms() if torch.compiler.is_compiling() else int(n)
        v = torch.randn_like(x)
        d1 = self.act_slope(x, W1, b1)
        d1_const, W1c, W2c = d1.detach(), W1.detach(), W2.detach()
        # value: sum_k (-1)^{k+1}/k v^T J^k v / P(N >= k); Neumann weights for the gradient
        value, w, neumann = x.new_zeros(x.shape[0]), v, torch.zeros_like(v)
        r = v  # (J^T)^j v
        for k in range(1, terms + 1):
            keep = (k <= n).to(x.dtype)  # 1 for every term of an eager run
            neumann = neumann + (keep * ((-1) ** (k - 1) / self._survival(k))) * r
            w = torch.nn.functional.linear(d1_const * torch.nn.functional.linear(w, W1c), W2c)
            value = value + (keep * ((-1) ** (k + 1) / k / self._survival(k))) * (w * v).sum(1)
            r = torch.nn.functional.linear(d1_const * torch.nn.functional.linear(r, W2c.t()), W1c.t())
        # gradient of log det(I + J) = tr((I + J)^-1 dJ) ~ [sum_k (-1)^k v^T J^k / P(N>=k+1)] dJ v
        jv = torch.nn.functional.linear(d1 * torch.nn.functional.linear(v, W1), W2)
        surrogate = (neumann.detach() * jv).sum(1)
        return value.detach() + surrogate - surrogate.detach()


class InvertibleResidualConv(FlowLayer):
    """The i-ResNet convolutional block ``g = conv3×3 → act → conv1×1 → act → conv3×3`` on
    images [C, H, W], every convolution spectrally normalised to ``coeff`` by its true operator
    norm at this input size (power iteration with conv / conv_transpose). The log-det is the
    Hutchinson estimate of the truncated series by vector-Jacobian products through autograd
    (as the paper's code does; D is too large for explicit Jacobians)."""

    def __init__(self, shape, hidden: int = 32, activation: str = "elu", coeff: float = 0.9, n_terms: int = 5,
                 n_power_iterations: int = 1, inverse_tol: float = 1e-6, inverse_max_iter: int = 200):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"InvertibleResidualConv: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if not 0 < coeff < 1:
            raise ValueError(f"InvertibleResidualConv: coeff must be in (0, 1), got {coeff}")
        c, h, w = shape
        sn = dict(coeff=coeff, n_power_iterations=n_power_iterations)
        self.convs = nn.ModuleList([
            spectral_norm(nn.Conv2d(c, hidden, 3, padding=1), input_shape=(c, h, w), **sn),
            spectral_norm(nn.Conv2d(hidden, hidden, 1), input_shape=(hidden, h, w), **sn),
            spectral_norm(nn.Conv2d(hidden, c, 3, padding=1), input_shape=(hidden, h, w), **sn),
        ])
        self.act, self.n_terms = activation_fn(activation), n_terms
        self.inverse_tol, self.inverse_max_iter = inverse_tol, inverse_max_iter
        self.last_inverse = {"iterations": 0, "residual": float("nan")}

    def g(self, x: Tensor) -> Tensor:
        h = self.act(self.convs[0](x))
        h = self.act(self.convs[1](h))
        return self.convs[2](h)

    def _g_and_logdet(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        # Vector-Jacobian products by torch.func (traceable by torch.compile, unlike
        # torch.autograd.grad), on weights normalised once: the transform may not run the
        # spectral norm's in-place power iteration.
        with parametrize.cached():
            for conv in self.convs:
                conv.weight  # noqa: B018 (fills the cache: one power-iteration step per forward)
            gx, vjp = torch.func.vjp(self.g, x)
            v = torch.randn_like(x)
            w, est = v, x.new_zeros(x.shape[0])
            for k in range(1, self.n_terms + 1):
                (w,) = vjp(w)
                est = est + (-1) ** (k + 1) / k * (w * v).flatten(1).sum(1)
        # The estimate carries a gradient (a double backward) only in training, as before.
        return gx, est if self.training else est.detach()

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x`` [B, C, H, W] → ``(y, logdet)`` with ``y = x + g(x)`` and ``logdet`` [B] the Hutchinson
        estimate (one probe per sample) of the series for log det(I + J_g) truncated at
        ``n_terms``; it carries a gradient only in training."""
        gx, ld = self._g_and_logdet(x)
        return x + gx, ld

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``y`` [B, C, H, W] → ``(x, logdet)`` by the fixed-point iteration ``x ← y − g(x)`` (rate
        Lip(g) ≲ coeff³), stopping when the largest absolute update is below ``inverse_tol`` or after
        ``inverse_max_iter`` steps (``last_inverse`` reports both); ``logdet`` [B] is minus a fresh
        log-det estimate at x, detached. No gradients."""
        with parametrize.cached(), torch.no_grad():  # one weight normalisation for all iterations
            x, residual, it = y.clone(), float("inf"), 0
            for it in range(1, self.inverse_max_iter + 1):
                x_new = y - self.g(x)
                residual = (x_new - x).abs().max().item() if x.numel() else 0.0
                x = x_new
                if residual < self.inverse_tol:
                    break
        self.last_inverse = {"iterations": it, "residual": residual}
        return x, -self._g_and_logdet(x)[1].detach()
