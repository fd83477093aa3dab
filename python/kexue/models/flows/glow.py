"""Glow (Kingma & Dhariwal 2018; post RealNVP与Glow): L levels of [squeeze → K × (ActNorm →
invertible 1×1 conv → coupling) → split with a learned prior]; temperature sampling."""
from __future__ import annotations

from typing import List, Optional, Sequence

from kexue.models.flows.density import FlowModel
from kexue.nn import ActNorm, Dequantize, Flow, FlowLayer, HalfCoupling, InvConv1x1, Permute, Reverse, Split, Squeeze


def flow_step(shape, hidden: int, coupling: str, permutation: str, context_features: int = 0) -> List[FlowLayer]:
    """ActNorm → channel mixing → coupling. ``coupling``: "affine" (Glow's sigmoid(s+2) scale) or
    "additive"; ``permutation``: "invconv" (LU 1×1 conv), "reverse" or "shuffle"."""
    c = shape[0]
    mix = {"invconv": lambda: InvConv1x1(c), "reverse": lambda: Reverse(c), "shuffle": lambda: Permute(c)}
    if permutation not in mix:
        raise ValueError(f"permutation must be one of {sorted(mix)}, got {permutation!r}")
    if coupling not in ("affine", "additive"):
        raise ValueError(f"coupling must be 'affine' or 'additive', got {coupling!r}")
    scale = "sigmoid" if coupling == "affine" else "none"
    return [ActNorm(c), mix[permutation](), HalfCoupling(shape, hidden=hidden, scale=scale, context_features=context_features)]


def glow_layers(shape, levels: int, depth: int, hidden: int, coupling: str, permutation: str,
                squeeze: bool, context_features: int = 0) -> List[FlowLayer]:
    """The multi-scale body shared by Glow, f-VAE's flow and BERT-flow (vectors: no squeeze)."""
    layers: List[FlowLayer] = []
    shape = tuple(shape)
    for level in range(levels):
        if squeeze:
            layers.append(Squeeze())
            shape = layers[-1].output_shape(shape)
        for _ in range(depth):
            layers += flow_step(shape, hidden, coupling, permutation, context_features)
        if level < levels - 1:
            layers.append(Split(shape, hidden=hidden, context_features=context_features))
            shape = layers[-1].output_shape(shape)
    return layers


class Glow(FlowModel):
    """Glow on images ([C, H, W]: ``levels`` × ``depth`` steps with squeezes and splits) or on
    vectors ([D]: the same without squeezes). ``coupling="additive"`` gives the volume-preserving
    variant; ``permutation`` picks the 1×1 conv (default), a reversal or a fixed shuffle.

    Options:
    levels: number of levels, each starting with a squeeze on images, with a learned-prior
      split halving the channels (features for vectors) between levels (None: 2 for images
      and for vectors with D >= 8, else 1)
    depth: flow steps per level (ActNorm, channel mixing, coupling)
    hidden: width of the coupling and split-prior networks (conv channels for images, MLP
      units for vectors)
    coupling: 'affine' (Glow's sigmoid(s + 2) scale) or 'additive' (volume-preserving)
    permutation: channel mixing before each coupling: 'invconv' (learned LU-decomposed 1x1
      conv), 'reverse' (channel reversal) or 'shuffle' (fixed random permutation)
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, levels: Optional[int] = None,
                 depth: int = 8, hidden: int = 64, coupling: str = "affine", permutation: str = "invconv"):
        if levels is None:  # images: 2 levels; vectors: one (a split of a 2-D point leaves nothing to couple)
            levels = 2 if len(event_shape) == 3 or event_shape[0] >= 8 else 1
        layers: List[FlowLayer] = [Dequantize(n_levels)] if n_levels else []
        layers += glow_layers(event_shape, levels, depth, hidden, coupling, permutation, squeeze=len(event_shape) == 3)
        super().__init__(Flow(layers, event_shape), n_levels)
