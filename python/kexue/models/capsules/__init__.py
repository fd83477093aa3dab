"""Capsule networks (MODELS.md C1): CapsNet with dynamic routing, the posts' variant, and the
overlapping-digits experiment."""
from kexue.models.capsules.capsnet import CapsNet, margin_loss, overlapping_digits, top2_accuracy
from kexue.models.capsules.matrix import MatrixCapsNet, spread_loss
from kexue.models.capsules.outputs import capsnet_outputs, matrixcaps_outputs
from kexue.train.registry import register_class

register_class("capsnet", CapsNet, default_data="digits", steps=600, batch_size=64, outputs=capsnet_outputs,
               description="CapsNet: primary capsules, dynamic routing to class capsules, margin loss")
register_class("matrixcaps", MatrixCapsNet, default_data="digits", steps=600, batch_size=64, outputs=matrixcaps_outputs,
               description="Matrix capsules with EM routing, coordinate addition, spread loss")

__all__ = ["CapsNet", "MatrixCapsNet", "margin_loss", "overlapping_digits", "spread_loss", "top2_accuracy"]
