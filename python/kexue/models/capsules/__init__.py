"""Capsule networks (MODELS.md C1): CapsNet with dynamic routing, the posts' variant, and the
overlapping-digits experiment."""
from kexue.models.capsules.capsnet import CapsNet, margin_loss, overlapping_digits, top2_accuracy
from kexue.models.capsules.matrix import MatrixCapsNet, spread_loss
from kexue.train.registry import register


def _build(dataset, **overrides):
    return CapsNet(tuple(dataset.event_shape), dataset.n_levels, **overrides)


register("capsnet", _build, default_data="digits",
         description="CapsNet: primary capsules, dynamic routing to class capsules, margin loss")
register("matrixcaps", lambda dataset, **kw: MatrixCapsNet(tuple(dataset.event_shape), dataset.n_levels, **kw),
         default_data="digits", description="Matrix capsules with EM routing, coordinate addition, spread loss")

__all__ = ["CapsNet", "MatrixCapsNet", "margin_loss", "overlapping_digits", "spread_loss", "top2_accuracy"]
