"""Demo section: Deep INFOMAX (MODELS.md F8). Trains the encoder on the digits with the post's
weights (α = 0.5, β = 1.5, γ = 0.01) and with the local term only (α = 0), prints the cosine
k-NN accuracy (k = 1, 5) of its features on the test split against raw pixels and the untrained
encoder, and writes ``infomax.png``: test digits with their nearest training digits."""
from __future__ import annotations

import pathlib
import time

import torch

from kexue.data import get_dataset
from kexue.models.gan.fit import fit
from kexue.models.infomax import DeepInfoMax, knn_accuracy

KS = (1, 5)
# Queries and neighbours shown in the figure.
N_QUERIES = 8
N_NEIGHBOURS = 8


def _features(model: DeepInfoMax, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.encode(x)


def _accuracies(train_f, train_y, test_f, test_y):
    return [knn_accuracy(train_f, train_y, test_f, test_y, k) for k in KS]


def _line(label: str, accs) -> str:
    return f"  {label:<48}" + "  ".join(f"k={k}: {100 * a:5.1f}%" for k, a in zip(KS, accs))


def run(out_dir: pathlib.Path, scale: float = 1.0) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from kexue.train.plots import image_grid, to_unit_range

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = max(1, int(1000 * scale))
    train, test = get_dataset("digits", "train"), get_dataset("digits", "test")
    print(f"Deep INFOMAX on the digits: cosine k-NN accuracy on the test split ({len(test.x)} digits)")
    print(_line("raw pixels", _accuracies(train.x.flatten(1).float(), train.labels, test.x.flatten(1).float(),
                                          test.labels)))
    models = {}
    for label, kw in (("post's weights (α=0.5, β=1.5, γ=0.01)", {}), ("local term only (α=0)", {"alpha": 0.0})):
        torch.manual_seed(0)
        model = DeepInfoMax(train.event_shape, train.n_levels, **kw)
        if not models:
            print(_line("untrained encoder", _accuracies(_features(model, train.x), train.labels,
                                                         _features(model, test.x), test.labels)))
        start = time.perf_counter()
        fit(model, train.x, steps, batch_size=64, lr=1e-3, seed=0, log_every=steps)
        accs = _accuracies(_features(model, train.x), train.labels, _features(model, test.x), test.labels)
        print(_line(f"{label}, {steps} steps", accs) + f"   ({time.perf_counter() - start:.0f} s)")
        models[label] = model

    model = models["local term only (α=0)"]
    train_f = torch.nn.functional.normalize(_features(model, train.x), dim=1)
    query_f = torch.nn.functional.normalize(_features(model, test.x[:N_QUERIES]), dim=1)
    nearest = (query_f @ train_f.T).topk(N_NEIGHBOURS, dim=1).indices
    rows = torch.cat([test.x[:N_QUERIES, None], train.x[nearest]], 1)  # [queries, 1 + neighbours, C, H, W]
    grid = image_grid(to_unit_range(rows.flatten(0, 1), train.n_levels), nrow=N_NEIGHBOURS + 1)
    fig = Figure(figsize=(5, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(grid[:, :, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title("Deep INFOMAX (α=0): test digit | nearest training digits (cosine)", fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    path = out_dir / "infomax.png"
    fig.savefig(path)
    print(f"  figure: {path}")
