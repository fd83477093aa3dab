"""k-nearest-neighbour classification by cosine similarity: how unsupervised features are judged
(post 深度学习的互信息：无监督提取特征 shows cosine neighbours of Deep INFOMAX features)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Test rows per similarity block: bounds the [rows, n_train] similarity matrix in memory.
KNN_CHUNK = 1024


def knn_predict(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, k: int) -> Tensor:
    """Labels [M] predicted for ``test_feats`` [M, D] by majority vote of the ``k`` training rows
    of ``train_feats`` [N, D] with the highest cosine similarity. Ties go to the class whose
    tied neighbours are more similar in total."""
    if train_feats.dim() != 2 or test_feats.dim() != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"knn: features must be [N, D] and [M, D] with the same D, got {list(train_feats.shape)} "
                         f"and {list(test_feats.shape)}")
    if train_labels.shape != (train_feats.shape[0],) or train_labels.dtype.is_floating_point:
        raise ValueError(f"knn: train_labels must be integer [{train_feats.shape[0]}], got "
                         f"{train_labels.dtype} {list(train_labels.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= train_feats.shape[0]:
        raise ValueError(f"knn: k must be an integer in [1, {train_feats.shape[0]}], got {k!r}")
    n_classes = int(train_labels.max()) + 1 if train_labels.numel() else 1
    train = F.normalize(train_feats.float(), dim=1)
    preds = []
    for block in F.normalize(test_feats.float(), dim=1).split(KNN_CHUNK):
        sim, idx = (block @ train.T).topk(k, dim=1)
        votes = F.one_hot(train_labels[idx], n_classes).to(sim.dtype)  # [m, k, classes]
        # A vote counts 1; the summed (1 + cos) of a class's neighbours, scaled below 1 by
        # 2k + 1, only breaks ties between equal counts.
        score = votes.sum(1) + (votes * (1 + sim).unsqueeze(-1)).sum(1) / (2 * k + 1)
        preds.append(score.argmax(1))
    return torch.cat(preds) if preds else train_labels.new_empty(0)


def knn_accuracy(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 k: int) -> float:
    """Fraction of ``test_labels`` that the cosine k-NN vote over the training features gets
    right (``knn_predict``)."""
    if test_labels.shape != (test_feats.shape[0],):
        raise ValueError(f"knn_accuracy: test_labels must be [{test_feats.shape[0]}], got {list(test_labels.shape)}")
    if test_feats.shape[0] == 0:
        raise ValueError("knn_accuracy: no test examples")
    pred = knn_predict(train_feats, train_labels, test_feats, k)
    return float((pred == test_labels.to(pred.device)).float().mean())


__all__ = ["knn_accuracy", "knn_predict"]
