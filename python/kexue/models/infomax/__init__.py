"""Deep INFOMAX (MODELS.md F8): an encoder trained by mutual information, without a decoder, and
the cosine k-NN evaluation of its features."""
from kexue.models.infomax.knn import knn_accuracy, knn_predict
from kexue.models.infomax.model import DeepInfoMax
from kexue.models.infomax.outputs import infomax_outputs
from kexue.train.registry import register_class

register_class("infomax", DeepInfoMax, default_data="digits", steps=3000, batch_size=64, outputs=infomax_outputs,
               description="Deep INFOMAX: Gaussian encoder, global + local JS mutual information, N(0, I) prior")

__all__ = ["DeepInfoMax", "knn_accuracy", "knn_predict"]
