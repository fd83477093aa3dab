"""i-ResNet and Residual Flows as density models: ActNorm → invertible residual MLP blocks,
on vectors (2-D toys, tabular data) or flattened images."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

from kexue.models.flows.density import FlowModel
from kexue.nn import ActNorm, Dequantize, Flatten, Flow, FlowLayer, Logit, Squeeze
from kexue.nn.iresnet import InvertibleResidualConv, InvertibleResidualMLP, ResidualFlowMLP


def _stack(block, event_shape, n_levels, n_blocks, logit_alpha=0.05, conv_block=None) -> List[FlowLayer]:
    """Preprocessing, then ``n_blocks`` × [ActNorm, residual block]: MLP blocks on the flattened
    data, or (``conv_block``) convolutional blocks after a squeeze ([C, H, W] → [4C, H/2, W/2])."""
    layers: List[FlowLayer] = []
    if n_levels:
        layers += [Dequantize(n_levels), Logit(logit_alpha)]
    shape = tuple(event_shape)
    if conv_block is not None and len(shape) == 3:
        layers.append(Squeeze())
        shape = layers[-1].output_shape(shape)
        for _ in range(n_blocks):
            layers += [ActNorm(shape[0]), conv_block(shape)]
        return layers
    dim = math.prod(shape)
    if len(shape) > 1:
        layers.append(Flatten(shape))
    for _ in range(n_blocks):
        layers += [ActNorm(dim), block(dim)]
    return layers


class IResNet(FlowModel):
    """i-ResNet (Behrmann et al. 2019): ELU blocks with ``coeff``-bounded spectral norms, the
    log-det series truncated at ``n_terms`` (exact traces for D ≤ 16, else Hutchinson).
    ``block="mlp"`` (default) flattens images; ``block="conv"`` squeezes them and uses the
    paper's convolutional blocks (operator-norm spectral normalisation).

    Options:
    n_blocks: number of [ActNorm, invertible residual block] pairs
    hidden: hidden width of each block's residual branch g (MLP units, or conv channels with
      block 'conv')
    activation: activation inside g: 'elu', 'lipswish', 'tanh' or 'softplus'
    coeff: bound on the spectral norm of each linear map/convolution in g, in (0, 1) (keeps g
      contractive, so the block is invertible)
    n_terms: terms of the truncated power series of log det(I + J_g)
    logdet: log-det traces of the MLP blocks: 'exact' (explicit Jacobian), 'hutchinson' (one
      random probe per sample) or 'auto' (exact for D <= 16); conv blocks always use Hutchinson
    block: 'mlp' (flattened data) or 'conv' (images only: squeeze, then convolutional blocks)
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, n_blocks: int = 8,
                 hidden: int = 128, activation: str = "elu", coeff: float = 0.9, n_terms: int = 10,
                 logdet: str = "auto", block: str = "mlp"):
        if block not in ("mlp", "conv"):
            raise ValueError(f"IResNet: block must be 'mlp' or 'conv', got {block!r}")
        if block == "conv" and len(event_shape) != 3:
            raise ValueError(f"IResNet: block='conv' needs images [C, H, W], got {list(event_shape)}")
        mlp = lambda d: InvertibleResidualMLP(d, hidden, activation, coeff, n_terms=n_terms, logdet=logdet)
        conv = (lambda s: InvertibleResidualConv(s, hidden, activation, coeff, n_terms=n_terms)) if block == "conv" else None
        super().__init__(Flow(_stack(mlp, event_shape, n_levels, n_blocks, conv_block=conv), event_shape), n_levels)

    def inverse_report(self):
        """Iterations and final residual of each block's last fixed-point inverse."""
        return [layer.last_inverse for layer in self.flow.layers if hasattr(layer, "last_inverse")]


class ResidualFlow(IResNet):
    """Residual Flows (Chen et al. 2019): LipSwish blocks, unbiased Russian-roulette log-det
    with the Neumann-series gradient in training (truncated series in eval).

    Options:
    n_blocks: number of [ActNorm, residual MLP block] pairs (images are flattened)
    hidden: hidden width of each block's residual branch g
    coeff: bound on the spectral norm of each linear map in g, in (0, 1) (keeps g contractive)
    n_terms: terms of the truncated log-det series in eval mode (exact traces for D <= 16,
      else Hutchinson)
    n_exact: log-det series terms always computed in training before the Russian roulette
    roulette_p: stopping probability of the roulette, in (0, 1): training takes n_exact +
      Geometric(roulette_p) terms, (1 - p)/p extra terms on average
    activation: activation inside g: 'lipswish', 'elu', 'tanh' or 'softplus'
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, n_blocks: int = 8,
                 hidden: int = 128, coeff: float = 0.9, n_terms: int = 10, n_exact: int = 2, roulette_p: float = 0.5,
                 activation: str = "lipswish"):
        block = lambda d: ResidualFlowMLP(d, hidden, activation, coeff, n_exact=n_exact, roulette_p=roulette_p,
                                          n_terms=n_terms, logdet="hutchinson" if d > 16 else "exact")
        FlowModel.__init__(self, Flow(_stack(block, event_shape, n_levels, n_blocks), event_shape), n_levels)
