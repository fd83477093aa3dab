"""BERT-flow (Li et al. 2020; post 你可能不需要BERT-flow): a Glow on sentence vectors mapping
the anisotropic embedding distribution to N(0, I); the flowed vectors are compared by cosine.

As in the authors' code: ``levels`` levels of ``depth`` steps (ActNorm → reversal → additive
coupling with a small MLP), a learned-prior split between levels; the output embedding is the
whole latent (factored-out parts and the rest)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from kexue.models.flows.density import FlowModel
from kexue.models.flows.glow import glow_layers
from kexue.nn import Flow

Tensor = torch.Tensor


class BertFlow(FlowModel):
    """BERT-flow on embedding vectors [D]: ``levels`` levels of ``depth`` steps (ActNorm →
    feature reversal → coupling), with a learned-prior split halving the features between
    levels, so D must be divisible by 2^levels. ``transform`` gives the flowed embeddings.

    Options:
    levels: number of levels; a learned-prior split factors out half of the features between
      consecutive levels (D must be divisible by 2^levels; None: 2 when D is divisible by 4,
      else 1)
    depth: flow steps per level (ActNorm, feature reversal, coupling)
    hidden: width of the hidden layers of the coupling and split-prior MLPs
    coupling: 'additive' (volume-preserving, the authors' choice) or 'affine' (Glow's
      sigmoid(s + 2) scale)
    """

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int] = None, levels: Optional[int] = None,
                 depth: int = 3,
                 hidden: int = 32, coupling: str = "additive"):
        if len(event_shape) != 1:
            raise ValueError(f"BertFlow: expects embedding vectors [D], got event shape {list(event_shape)}")
        if n_levels:
            raise ValueError("BertFlow: embeddings are continuous; n_levels must be None")
        if levels is None:
            levels = 2 if event_shape[0] % 4 == 0 else 1
        if isinstance(levels, int) and levels >= 1 and event_shape[0] % 2**levels:
            raise ValueError(f"BertFlow: {event_shape[0]} features cannot be halved across levels={levels} "
                             f"(D must be divisible by 2^levels = {2**levels}); set levels lower")
        layers = glow_layers(event_shape, levels, depth, hidden, coupling, "reverse", squeeze=False)
        super().__init__(Flow(layers, event_shape), None)

    @torch.no_grad()
    def transform(self, x: Tensor, batch_size: int = 4096) -> Tensor:
        """The flowed embeddings (eval mode, in batches)."""
        was = self.training
        self.eval()
        out = torch.cat([self.flow(x[i : i + batch_size])[0] for i in range(0, x.shape[0], batch_size)])
        self.train(was)
        return out
