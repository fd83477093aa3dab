"""RealNVP (Dinh et al. 2016; post RealNVP与Glow): affine couplings with checkerboard and
channel masks, squeeze, and multi-scale factor-out; a masked-coupling stack for vectors."""
from __future__ import annotations

from typing import List, Optional, Sequence

from kexue.models.flows.density import FlowModel
from kexue.nn import (
    ActNorm, Dequantize, Flow, FlowLayer, Logit, MaskedCoupling, Split, Squeeze, channel_mask, checkerboard_mask,
)


class RealNVP(FlowModel):
    """Images ([C, H, W]): per scale, 3 checkerboard couplings → squeeze → 3 channel couplings
    → factor out half (learned prior); the last scale has 4 checkerboard couplings. Vectors
    ([D]): ``n_couplings`` couplings with alternating interleaved masks and ActNorm between.

    The scale is ``exp(clamp·tanh(s/clamp))``: RealNVP's tanh-bounded log-scale.

    Options:
    n_scales: number of scales for images (H and W must be divisible by 2^(n_scales - 1));
      unused for vectors
    hidden: width of the coupling and split-prior networks (conv channels for images, MLP
      units for vectors)
    n_couplings: number of masked couplings for vectors (each followed by ActNorm); unused for
      images
    clamp: bound on the coupling log-scale, |log scale| < clamp
    logit_alpha: alpha of the logit preprocessing logit(alpha + (1 - 2 alpha) x) after
      dequantisation, in [0, 0.5); only with discrete data
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, n_scales: int = 2,
                 hidden: int = 64, n_couplings: int = 8, clamp: float = 3.0, logit_alpha: float = 0.05):
        shape = tuple(event_shape)
        coupling = dict(hidden=hidden, scale="tanh", clamp=clamp)
        layers: List[FlowLayer] = []
        if n_levels:
            layers += [Dequantize(n_levels), Logit(logit_alpha)]
        if len(shape) == 1:
            for i in range(n_couplings):
                layers += [MaskedCoupling(checkerboard_mask(shape, i % 2), **coupling), ActNorm(shape[0])]
        else:
            for scale in range(n_scales):
                last = scale == n_scales - 1
                for i in range(4 if last else 3):
                    layers.append(MaskedCoupling(checkerboard_mask(shape, i % 2), **coupling))
                if last:
                    break
                layers.append(Squeeze())
                shape = layers[-1].output_shape(shape)
                for i in range(3):
                    layers.append(MaskedCoupling(channel_mask(shape, i % 2), **coupling))
                layers.append(Split(shape, hidden=hidden))
                shape = layers[-1].output_shape(shape)
        super().__init__(Flow(layers, event_shape), n_levels)
