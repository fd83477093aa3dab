"""Layers built on kexue.ops. Flow layers follow ``kexue.nn.base.FlowLayer``."""
from kexue.nn.actnorm import ActNorm, Scaling
from kexue.nn.base import FlowLayer
from kexue.nn.conditioners import MLP, ConvNet
from kexue.nn.coupling import HalfCoupling, MaskedCoupling, channel_mask, checkerboard_mask
from kexue.nn.flow import Flow, StandardLogistic, StandardNormal
from kexue.nn.invconv import InvConv1x1
from kexue.nn.iresnet import InvertibleResidualMLP, ResidualFlowMLP
from kexue.nn.preprocess import Dequantize, Logit
from kexue.nn.reshape import Flatten, Permute, Reverse, Squeeze
from kexue.nn.spectral_norm import SpectralNorm, gradient_penalty, spectral_norm, spectral_norm_regularizer
from kexue.nn.split import Split

__all__ = [
    "ActNorm", "ConvNet", "Dequantize", "Flatten", "Flow", "FlowLayer", "HalfCoupling", "InvConv1x1", "Logit",
    "MLP", "MaskedCoupling", "Permute", "Reverse", "Scaling", "Split", "Squeeze", "StandardLogistic",
    "StandardNormal", "channel_mask", "checkerboard_mask", "InvertibleResidualMLP", "ResidualFlowMLP",
    "SpectralNorm", "spectral_norm", "spectral_norm_regularizer", "gradient_penalty",
]

from kexue.nn.rope import RoPE  # noqa: E402
from kexue.nn.attention import MultiHeadAttention  # noqa: E402
from kexue.nn.transformer import FeedForward, TransformerBlock, TransformerStack, deepnorm_coefficients  # noqa: E402
from kexue.nn.mlm import MLMEmbeddingMasker, MLMHead, mlm_mask_tokens  # noqa: E402

__all__ += ["RoPE", "MultiHeadAttention", "FeedForward", "TransformerBlock", "TransformerStack",
            "deepnorm_coefficients", "MLMEmbeddingMasker", "MLMHead", "mlm_mask_tokens"]
