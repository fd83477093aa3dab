"""What a Deep INFOMAX run writes (``kexue train infomax``): the posts' picture, each test query
beside its nearest training images by cosine similarity of the features (``neighbours.png``),
and, for labelled data, the k-NN accuracy of the features (``knn.json``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F

from kexue.models.infomax.knn import knn_accuracy

N_QUERIES = 8
N_NEIGHBOURS = 9
KNN_K = (1, 5)
ENCODE_BATCH = 512


def _encode(model, x: torch.Tensor, device) -> torch.Tensor:
    return torch.cat([model.encode(xb.to(device)).float().cpu() for xb in x.split(ENCODE_BATCH)])


def infomax_outputs(model, run) -> List[Path]:
    from kexue.train import plots

    train_x, test_x = run.train_data.x, run.test_data.x
    train_f, test_f = _encode(model, train_x, run.device), _encode(model, test_x[:N_QUERIES], run.device)
    sim = F.normalize(test_f, dim=1) @ F.normalize(train_f, dim=1).T
    idx = sim.topk(min(N_NEIGHBOURS, len(train_x)), dim=1).indices
    rows = [torch.cat([test_x[i:i + 1], train_x[idx[i]]]) for i in range(len(idx))]
    path = run.out_dir / "neighbours.png"
    plots.save_sample_grid(torch.cat(rows), path, n_levels=run.train_data.n_levels, nrow=1 + idx.shape[1],
                           title=f"test query, then its nearest training images by feature cosine (step {run.step})")
    written = [path]
    if run.train_data.labels is not None and run.test_data.labels is not None:
        all_test = _encode(model, test_x, run.device)
        acc = {f"knn{k}_accuracy": knn_accuracy(train_f, run.train_data.labels, all_test, run.test_data.labels, k)
               for k in KNN_K}
        path = run.out_dir / "knn.json"
        path.write_text(json.dumps({"step": run.step, **acc}) + "\n")
        written.append(path)
    return written


__all__ = ["infomax_outputs"]
