"""i-ResNet and Residual Flows as density models: ActNorm → invertible residual MLP blocks,
on vectors (2-D toys, tabular data) or flattened images."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

from kexue.models.flows.density import FlowModel
from kexue.nn import ActNorm, Dequantize, Flatten, Flow, FlowLayer, Logit
from kexue.nn.iresnet import InvertibleResidualMLP, ResidualFlowMLP


def _stack(block, event_shape, n_levels, n_blocks, logit_alpha=0.05) -> List[FlowLayer]:
    dim = math.prod(event_shape)
    layers: List[FlowLayer] = []
    if n_levels:
        layers += [Dequantize(n_levels), Logit(logit_alpha)]
    if len(event_shape) > 1:
        layers.append(Flatten(event_shape))
    for _ in range(n_blocks):
        layers += [ActNorm(dim), block(dim)]
    return layers


class IResNet(FlowModel):
    """i-ResNet (Behrmann et al. 2019): ELU blocks with ``coeff``-bounded spectral norms, the
    log-det series truncated at ``n_terms`` (exact traces for D ≤ 16, else Hutchinson)."""

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, n_blocks: int = 8,
                 hidden: int = 128, activation: str = "elu", coeff: float = 0.9, n_terms: int = 10,
                 logdet: str = "auto"):
        block = lambda d: InvertibleResidualMLP(d, hidden, activation, coeff, n_terms=n_terms, logdet=logdet)
        super().__init__(Flow(_stack(block, event_shape, n_levels, n_blocks), event_shape), n_levels)

    def inverse_report(self):
        """Iterations and final residual of each block's last fixed-point inverse."""
        return [layer.last_inverse for layer in self.flow.layers if isinstance(layer, InvertibleResidualMLP)]


class ResidualFlow(IResNet):
    """Residual Flows (Chen et al. 2019): LipSwish blocks, unbiased Russian-roulette log-det
    with the Neumann-series gradient in training (truncated series in eval)."""

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, n_blocks: int = 8,
                 hidden: int = 128, coeff: float = 0.9, n_terms: int = 10, n_exact: int = 2, roulette_p: float = 0.5,
                 activation: str = "lipswish"):
        block = lambda d: ResidualFlowMLP(d, hidden, activation, coeff, n_exact=n_exact, roulette_p=roulette_p,
                                          n_terms=n_terms, logdet="hutchinson" if d > 16 else "exact")
        FlowModel.__init__(self, Flow(_stack(block, event_shape, n_levels, n_blocks), event_shape), n_levels)
