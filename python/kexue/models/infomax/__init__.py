"""Deep INFOMAX (MODELS.md F8): an encoder trained by mutual information, without a decoder, and
the cosine k-NN evaluation of its features."""
from kexue.models.infomax.knn import knn_accuracy, knn_predict
from kexue.models.infomax.model import DeepInfoMax
from kexue.train.registry import register


def _build(dataset, **overrides):
    return DeepInfoMax(dataset.event_shape, dataset.n_levels, **overrides)


register("infomax", _build, default_data="digits",
         description="Deep INFOMAX: Gaussian encoder, global + local JS mutual information, N(0, I) prior")

__all__ = ["DeepInfoMax", "knn_accuracy", "knn_predict"]
