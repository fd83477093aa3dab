"""NICE (Dinh et al. 2014; post 细水长flow之NICE): additive coupling on interleaved halves of a
flattened input, a final diagonal scaling, and a logistic (paper) or Gaussian prior."""
from __future__ import annotations

import math
from typing import Optional, Sequence

from kexue.models.flows.density import FlowModel
from kexue.nn import Dequantize, Flatten, Flow, MaskedCoupling, Scaling, checkerboard_mask
from kexue.nn.conditioners import MLP


class NICE(FlowModel):
    """``n_couplings`` additive couplings alternating which interleaved half (odd/even
    features) is updated, each with an MLP of ``depth`` hidden layers, then ``Scaling``.
    ``n_levels`` (e.g. 17 for the digits) adds dequantisation, so bits/dim are discrete.

    Options:
    n_couplings: number of additive coupling layers (alternating odd/even features)
    hidden: units per hidden layer of each coupling MLP
    depth: hidden layers per coupling MLP
    prior: base distribution: 'logistic' (the paper's) or 'normal'
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, n_couplings: int = 4,
                 hidden: int = 256, depth: int = 4, prior: str = "logistic"):
        dim = math.prod(event_shape)
        layers = [Dequantize(n_levels)] if n_levels else []
        if len(event_shape) > 1:
            layers.append(Flatten(event_shape))
        for i in range(n_couplings):
            mask = checkerboard_mask((dim,), parity=i % 2)
            layers.append(MaskedCoupling(mask, scale="none", net=MLP(dim, dim, hidden, depth)))
        layers.append(Scaling(dim))
        super().__init__(Flow(layers, event_shape, prior=prior), n_levels)
