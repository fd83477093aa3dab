"""The von Mises-Fisher distribution on the unit sphere S^{d−1} ⊂ R^d (post 变分自编码器（七）：球面上的VAE
（vMF-VAE）; Davidson et al. 2018, "Hyperspherical Variational Auto-Encoders"; Wood 1994).

Density with respect to the surface measure of S^{d−1}::

    p(x; μ, κ) = C_d(κ) · exp(κ μᵀx),   C_d(κ) = κ^{d/2−1} / ((2π)^{d/2} I_{d/2−1}(κ)),

with mean direction μ (a unit vector) and concentration κ > 0. Its mean is A_d(κ)·μ with the
mean resultant length A_d(κ) = I_{d/2}(κ) / I_{d/2−1}(κ); its KL divergence from the uniform
distribution on the sphere is log C_d(κ) + κ A_d(κ) + log |S^{d−1}|, a function of κ and d only —
which is why the vMF-VAE with a fixed κ has a constant KL term.

Sampling (Wood 1994): the cosine w = μᵀx has density ∝ e^{κw} (1 − w²)^{(d−3)/2} on [−1, 1],
depending on κ and d only; it is drawn by rejection from the envelope
w = (1 − (1+b)Z)/(1 − (1−b)Z), Z ~ Beta((d−1)/2, (d−1)/2),
b = (d−1)/(2κ + √(4κ² + (d−1)²)). Then x = w·e₁ + √(1−w²)·(0, v) with v uniform on S^{d−2}, and an
orthogonal map Q with Q e₁ = μ (a Householder reflection) carries it to the μ frame.

Gradients: ``rsample`` is reparameterised with respect to ``loc`` (x = Q(μ)·x', x' independent
of μ). The cosine w is drawn without a gradient, so ``concentration`` receives none through
``rsample`` (it does through ``log_prob``, ``entropy`` and ``kl_to_uniform``); the vMF-VAE keeps κ
fixed, where this is exact. (Davidson et al. add a score-function correction for a learned κ.)
"""
from __future__ import annotations

import math
from numbers import Number
from typing import Optional, Tuple

import torch
from torch.distributions import Distribution, constraints
from torch.distributions.kl import register_kl

from kexue import _random
from kexue.distributions.bessel import bessel_iv_ratio, log_bessel_iv_and_ratio
from kexue.distributions.hyperspherical_uniform import HypersphericalUniform, log_sphere_area, unit_sphere

Tensor = torch.Tensor

# Wood's envelope accepts at least ~65% of its proposals for every (κ, d) (measured over
# d ∈ [2, 1024], κ ∈ [1e-3, 1e5]; the worst case is a large κ/d, the best a small κ). The first
# batch gives every sample FIRST_ROUND_PROPOSALS proposals at once, which leaves ≤ 0.35⁴ ≈ 1.5% of
# the samples unaccepted; those get RETRY_PROPOSALS proposals per batch (a straggler survives one
# batch with probability ≤ 0.35³² ≈ 3e-15). Each batch costs one host synchronisation (finding
# the unaccepted samples), so a draw of any size takes one or two.
FIRST_ROUND_PROPOSALS = 4
RETRY_PROPOSALS = 32
# Under torch.compile there is no host to ask which samples were rejected: one batch of
# COMPILED_PROPOSALS proposals per sample, whose first accepted one is taken. All of them are
# rejected with probability ≤ 0.35⁶⁴ ≈ 6e-30 per sample, which is then left with its first proposal.
COMPILED_PROPOSALS = 64


def mean_resultant_length(dim: int, kappa: Tensor) -> Tensor:
    """A_d(κ) = I_{d/2}(κ) / I_{d/2−1}(κ) = ‖E x‖ for x ~ vMF(μ, κ) on S^{d−1}."""
    return bessel_iv_ratio(dim / 2 - 1, kappa)


def _log_normalizer_and_mean_length(dim: int, kappa: Tensor) -> Tuple[Tensor, Tensor]:
    """(log C_d(κ), A_d(κ)) in float64 from one Bessel evaluation: the sums below cancel (the KL
    is ~κ²/(2d) at small κ while its terms are ~(d/2) log κ), so they are formed in float64."""
    v = dim / 2 - 1
    k64 = kappa.to(torch.float64)
    log_iv, ratio = log_bessel_iv_and_ratio(v, k64)
    return v * torch.log(k64) - (dim / 2) * math.log(2 * math.pi) - log_iv, ratio


def _out(kappa: Tensor, value: Tensor) -> Tensor:
    return value.to(torch.promote_types(kappa.dtype, torch.float32))


def log_normalizer(dim: int, kappa: Tensor) -> Tensor:
    """log C_d(κ) = (d/2 − 1) log κ − (d/2) log 2π − log I_{d/2−1}(κ), for κ > 0."""
    return _out(kappa, _log_normalizer_and_mean_length(dim, kappa)[0])


def kl_vmf_uniform(dim: int, kappa: Tensor) -> Tensor:
    """KL(vMF(·, κ) ‖ Uniform(S^{d−1})) = log C_d(κ) + κ A_d(κ) + log |S^{d−1}| (≥ 0, → 0 as κ → 0)."""
    log_c, a = _log_normalizer_and_mean_length(dim, kappa)
    return _out(kappa, log_c + kappa.to(torch.float64) * a + log_sphere_area(dim))


def vmf_entropy(dim: int, kappa: Tensor) -> Tensor:
    """H = −log C_d(κ) − κ A_d(κ)."""
    log_c, a = _log_normalizer_and_mean_length(dim, kappa)
    return _out(kappa, -log_c - kappa.to(torch.float64) * a)


def _wood_envelope(kappa: Tensor, dim: int) -> Tensor:
    """b = (d−1)/(2κ + √(4κ² + (d−1)²)): Wood's (−2κ + √(4κ² + (d−1)²))/(d−1) without its
    cancellation at large κ."""
    m1 = dim - 1
    return m1 / (2 * kappa + torch.sqrt(4 * kappa * kappa + m1 * m1))


def _propose(kappa: Tensor, b: Tensor, dim: int, n_proposals: int,
             generator: Optional[torch.Generator]) -> Tuple[Tensor, Tensor, Tensor]:
    """``n_proposals`` proposals for each of the [N] samples: (accepted [N, P], w [N, P],
    √(1−w²) [N, P]).

    With D = 1 − (1−b)Z, every quantity is written so that nothing cancels as b → 0 (large κ):
    1 − w = 2bZ/D, 1 + w = 2(1−Z)/D, w − x₀ = 2b(1 − 2Z)/((1+b)D), 1 − x₀w = 2b/((1+b)D),
    1 − x₀² = 4b/(1+b)², with x₀ = (1−b)/(1+b). Wood's test
    κw + (d−1) log(1 − x₀w) − [κx₀ + (d−1) log(1 − x₀²)] ≥ log U then reads
    κ(w − x₀) + (d−1)(log(1+b) − log 2 − log D) ≥ log U.
    """
    shape = (kappa.shape[0], n_proposals)
    half = torch.full(shape, (dim - 1) / 2, device=kappa.device, dtype=kappa.dtype)
    g1 = torch._standard_gamma(half, generator=generator)
    g2 = torch._standard_gamma(half, generator=generator)
    z = g1 / (g1 + g2)  # Beta((d−1)/2, (d−1)/2); a 0/0 (both gammas underflowing) is NaN and rejected
    u = _random.rand(shape, generator=generator, device=kappa.device, dtype=kappa.dtype)
    k, b = kappa[:, None], b[:, None]
    denom = 1 - (1 - b) * z
    w = (1 - (1 + b) * z) / denom
    sin = 2 * torch.sqrt(b * z * (1 - z)) / denom
    log_ratio = k * (2 * b * (1 - 2 * z) / ((1 + b) * denom)) + (dim - 1) * (
        torch.log1p(b) - math.log(2.0) - torch.log(denom))
    return log_ratio >= torch.log(u), w, sin


def sample_cosine(kappa: Tensor, dim: int, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """Wood's rejection sampler for w = μᵀx, x ~ vMF(μ, κ) on S^{dim−1}, one draw per element of
    ``kappa`` (any shape, κ > 0). Returns (w, √(1 − w²)), each of ``kappa``'s shape and dtype.

    Vectorised: all samples draw a batch of proposals at once and take their first accepted one
    (argmax over the acceptance mask); only the samples with none accepted draw again, as a
    batch of RETRY_PROPOSALS rounds. A draw therefore synchronises with the host once or twice,
    never once per rejection round.
    """
    flat = kappa.reshape(-1)
    b = _wood_envelope(flat, dim)
    if torch.compiler.is_compiling():
        accepted, w_p, sin_p = _propose(flat, b, dim, COMPILED_PROPOSALS, generator)
        first = accepted.to(torch.uint8).argmax(dim=1, keepdim=True)
        return w_p.gather(1, first).view(kappa.shape), sin_p.gather(1, first).view(kappa.shape)
    w = torch.empty_like(flat)
    sin = torch.empty_like(flat)
    pending = None  # None: every sample (saves an index copy in the first batch)
    n_proposals = FIRST_ROUND_PROPOSALS
    while True:
        k_p, b_p = (flat, b) if pending is None else (flat[pending], b[pending])
        accepted, w_p, sin_p = _propose(k_p, b_p, dim, n_proposals, generator)
        first = accepted.to(torch.uint8).argmax(dim=1, keepdim=True)  # first accepted proposal (0 if none)
        got = accepted.any(dim=1)
        w_first, sin_first = w_p.gather(1, first)[:, 0], sin_p.gather(1, first)[:, 0]
        rejected = (~got).nonzero()[:, 0]  # the one host synchronisation of this batch
        if pending is None:
            w.copy_(w_first)
            sin.copy_(sin_first)
            pending = rejected
        else:
            done = got.nonzero()[:, 0]
            w[pending[done]] = w_first[done]
            sin[pending[done]] = sin_first[done]
            pending = pending[rejected]
        if pending.numel() == 0:
            return w.view(kappa.shape), sin.view(kappa.shape)
        n_proposals = RETRY_PROPOSALS


def _householder_from_e1(loc: Tensor, x: Tensor) -> Tensor:
    """Q x for an orthogonal Q with Q e₁ = loc (unit vectors, last dimension; loc broadcasts).

    Q = −s·H with H the reflection across the hyperplane orthogonal to u = loc + s·e₁ and
    s = sign(loc₁) (+1 at 0): H e₁ = −s·loc, and ‖u‖² = 2(1 + |loc₁|) ≥ 2, so unlike the plain
    reflection through e₁ − loc it is well conditioned for every loc (no ε, smooth gradients).
    Any such Q gives the same distribution: the tangent part is rotation invariant about e₁.
    """
    s = torch.where(loc[..., :1] >= 0, 1.0, -1.0).to(loc.dtype)
    u = torch.cat([loc[..., :1] + s, loc[..., 1:]], dim=-1)
    u_sq = (u * u).sum(-1, keepdim=True)
    return -s * (x - (2 * (u * x).sum(-1, keepdim=True) / u_sq) * u)


def _as_tensor(value, like: Tensor, name: str) -> Tensor:
    if isinstance(value, Tensor):
        if not value.dtype.is_floating_point:
            raise TypeError(f"VonMisesFisher: {name} must be a floating tensor, got {value.dtype}")
        return value
    if isinstance(value, Number) and not isinstance(value, bool):
        return torch.tensor(float(value), device=like.device, dtype=like.dtype)
    raise TypeError(f"VonMisesFisher: {name} must be a tensor or a number, got {type(value).__name__}")


class VonMisesFisher(Distribution):
    """vMF(loc, concentration) on S^{d−1}: ``loc`` [..., d] unit vectors (d ≥ 2), ``concentration``
    [...] (or a number) > 0; they broadcast to the batch shape. See the module docstring for the
    formulas and for which parameters ``rsample`` differentiates.

    ``validate_args`` (default: torch's global default, on unless Python runs with -O) checks that
    loc has unit norm and κ > 0, and that ``log_prob``'s values lie on the sphere; each check reads
    a value back from the device, so hot loops pass ``validate_args=False``.
    """

    arg_constraints = {"loc": unit_sphere, "concentration": constraints.positive}
    support = unit_sphere
    has_rsample = True

    def __init__(self, loc: Tensor, concentration, validate_args: Optional[bool] = None):
        if not isinstance(loc, Tensor):
            raise TypeError(f"VonMisesFisher: loc must be a tensor [..., d], got {type(loc).__name__}")
        if not loc.dtype.is_floating_point:
            raise TypeError(f"VonMisesFisher: loc must be a floating tensor, got {loc.dtype}")
        if loc.dim() < 1 or loc.shape[-1] < 2:
            raise ValueError(f"VonMisesFisher: loc must have shape [..., d] with d >= 2 (a point of S^(d-1)), "
                             f"got shape {list(loc.shape)}")
        concentration = _as_tensor(concentration, loc, "concentration")
        try:
            batch_shape = torch.broadcast_shapes(loc.shape[:-1], concentration.shape)
        except RuntimeError:
            raise ValueError(f"VonMisesFisher: concentration of shape {list(concentration.shape)} does not broadcast "
                             f"with the batch shape {list(loc.shape[:-1])} of loc {list(loc.shape)}") from None
        dtype = torch.promote_types(loc.dtype, concentration.dtype)
        self.dim = loc.shape[-1]
        self.loc = loc.to(dtype).expand(*batch_shape, self.dim)
        self.concentration = concentration.to(dtype).expand(batch_shape)
        validate = Distribution._validate_args if validate_args is None else bool(validate_args)
        if validate:
            self._check_parameters()
        super().__init__(batch_shape, torch.Size([self.dim]), validate_args=False)
        self._validate_args = validate

    def _check_parameters(self) -> None:
        k = self.concentration
        if not bool(torch.all(k > 0)):  # also catches NaN
            bad = k[~(k > 0)].flatten()[0].item()
            raise ValueError(f"VonMisesFisher: concentration must be > 0 (and finite), got {bad}")
        if not bool(torch.all(torch.isfinite(k))):
            raise ValueError("VonMisesFisher: concentration must be finite, got inf")
        if not bool(unit_sphere.check(self.loc).all()):
            norms = torch.linalg.vector_norm(self.loc, dim=-1)
            worst = norms.flatten()[(norms - 1).abs().flatten().argmax()].item()
            raise ValueError(f"VonMisesFisher: loc must be unit vectors along its last dimension; found norm {worst:.6g} "
                             "(normalise it, e.g. torch.nn.functional.normalize(loc, dim=-1))")

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return VonMisesFisher(self.loc.expand(*batch_shape, self.dim), self.concentration.expand(batch_shape),
                              validate_args=False)

    # --- closed forms -----------------------------------------------------------------------
    @property
    def mean(self) -> Tensor:
        return mean_resultant_length(self.dim, self.concentration)[..., None] * self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    def log_normalizer(self) -> Tensor:
        """log C_d(κ), [batch_shape]."""
        return log_normalizer(self.dim, self.concentration)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self.log_normalizer() + self.concentration * (self.loc * value).sum(-1)

    def entropy(self) -> Tensor:
        """−log C_d(κ) − κ A_d(κ)."""
        return vmf_entropy(self.dim, self.concentration)

    def kl_to_uniform(self) -> Tensor:
        """KL(self ‖ Uniform(S^{d−1})) = log C_d(κ) + κ A_d(κ) + log |S^{d−1}|, [batch_shape]."""
        return kl_vmf_uniform(self.dim, self.concentration)

    # --- sampling ---------------------------------------------------------------------------
    def rsample(self, sample_shape=torch.Size(), generator: Optional[torch.Generator] = None) -> Tensor:
        """Samples [*sample_shape, *batch_shape, d], differentiable with respect to ``loc``."""
        shape = self._extended_shape(torch.Size(sample_shape))
        kappa = self.concentration.detach().expand(shape[:-1])
        w, sin = sample_cosine(kappa, self.dim, generator)
        v = _random.randn(*shape[:-1], self.dim - 1, generator=generator, device=w.device, dtype=w.dtype)
        v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        x_e1 = torch.cat([w[..., None], sin[..., None] * v], dim=-1)  # the sample in the frame where μ = e₁
        return _householder_from_e1(self.loc, x_e1)

    def sample(self, sample_shape=torch.Size(), generator: Optional[torch.Generator] = None) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)


@register_kl(VonMisesFisher, HypersphericalUniform)
def _kl_vmf_uniform(p: VonMisesFisher, q: HypersphericalUniform) -> Tensor:
    if p.dim != q.dim:
        raise ValueError(f"KL(vMF ‖ uniform): dimensions differ ({p.dim} vs {q.dim})")
    return p.kl_to_uniform()


__all__ = ["COMPILED_PROPOSALS", "FIRST_ROUND_PROPOSALS", "RETRY_PROPOSALS", "VonMisesFisher", "kl_vmf_uniform", "log_normalizer",
           "mean_resultant_length", "sample_cosine", "vmf_entropy"]
