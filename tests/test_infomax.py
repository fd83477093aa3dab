"""Deep INFOMAX: the loss against its formula, training, shapes, checkpoints, the cosine k-NN
evaluation, bad input."""
import io
import math

import pytest
import torch

from kexue.models.gan import get_divergence
from kexue.models.infomax import DeepInfoMax, knn_accuracy, knn_predict


def test_knn_on_a_constructed_example():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.05]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    test = torch.tensor([[2.0, 0.1], [0.05, 3.0], [-1.0, 0.0]])
    assert knn_predict(train, labels, test, 1).tolist() == [0, 1, 2]
    # k = 3: two votes beat one, whatever the third neighbour's class
    assert knn_predict(train, labels, test, 3).tolist() == [0, 1, 1]
    assert knn_accuracy(train, labels, test, torch.tensor([0, 1, 2]), 1) == 1.0
    assert knn_accuracy(train, labels, test, torch.tensor([0, 1, 2]), 3) == pytest.approx(2 / 3)
    # cosine: scale does not matter
    assert knn_predict(train * 10, labels, test * 0.01, 1).tolist() == [0, 1, 2]
    # a tie (one vote each) goes to the more similar neighbour
    assert knn_predict(train[[0, 2]], labels[[0, 2]], torch.tensor([[1.0, 0.8]]), 2).tolist() == [0]


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(200, 6, generator=g), torch.randn(50, 6, generator=g)
    labels = torch.randint(0, 4, (200,), generator=g)
    sims = torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    for k in (1, 5):
        idx = sims.topk(k, dim=1).indices
        counts = torch.stack([(labels[idx] == c).sum(1) for c in range(4)], 1)
        pred = knn_predict(train, labels, test, k)
        assert (counts.gather(1, pred[:, None]).squeeze(1) == counts.max(1).values).all()
    assert knn_predict(train, labels, test, 1).tolist() == labels[sims.argmax(1)].tolist()


def test_knn_bad_input():
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
    with pytest.raises(ValueError, match="k must be an integer in"):
        knn_accuracy(x, y, x, y, 6)
    with pytest.raises(ValueError, match="same D"):
        knn_accuracy(x, y, torch.randn(2, 4), y[:2], 1)
    with pytest.raises(ValueError, match="train_labels must be integer"):
        knn_predict(x, y.float(), x, 1)
    with pytest.raises(ValueError, match="test_labels"):
        knn_accuracy(x, y, x, y[:3], 1)


def digits(split="train", n=None):
    from kexue.data import load_digits

    x, y = load_digits(split)
    return (x[:n], y[:n]) if n else (x, y)


def test_loss_is_the_weighted_sum_of_its_terms():
    torch.manual_seed(0)
    model = DeepInfoMax((1, 8, 8), 17, z_dim=8, hidden=16, alpha=0.5, beta=1.5, gamma=0.01)
    x, _ = digits(n=12)
    out = model.loss(x, generator=torch.Generator().manual_seed(1))
    again = model.loss(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out["loss"], again["loss"])
    expected = -0.5 * out["global_mi"] - 1.5 * out["local_mi"] + 0.01 * out["prior_kl"]
    torch.testing.assert_close(out["loss"].detach(), expected)
    # the MI estimates are JS bounds: at most 0, and −log 4 for a critic that outputs 0
    assert out["global_mi"] <= 0 and out["local_mi"] <= 0
    zero = torch.zeros(3)
    torch.testing.assert_close(get_divergence("gan").bound_from_logits(zero, zero), torch.tensor(-math.log(4.0)))
    # the prior term is KL(N(μ, σ²) ‖ N(0, 1)) averaged over the code's dimensions
    _, mean, logvar = model.features(x)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()),
                                           torch.distributions.Normal(0.0, 1.0)).mean()
    torch.testing.assert_close(out["prior_kl"], kl.detach())


def test_training_lowers_the_loss_and_raises_the_mi_estimates():
    x, _ = digits()
    torch.manual_seed(0)
    model = DeepInfoMax((1, 8, 8), 17, z_dim=16, hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    hist = []
    for _ in range(120):
        out = model.loss(x[torch.randint(0, len(x), (64,), generator=g)])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        hist.append({k: float(v.detach()) for k, v in out.items()})

    def mean(key, part):
        return sum(h[key] for h in part) / len(part)

    assert mean("loss", hist[-10:]) < mean("loss", hist[:10]) - 0.3
    assert mean("local_mi", hist[-10:]) > mean("local_mi", hist[:10])


def test_shapes_encode_and_state_dict():
    torch.manual_seed(0)
    model = DeepInfoMax((1, 8, 8), 17, z_dim=8, hidden=16)
    x, _ = digits(n=20)
    model.loss(x)  # move the batch-norm statistics
    model.eval()
    m, mean, logvar = model.features(x)
    assert m.shape == (20, 16, 4, 4) and mean.shape == logvar.shape == (20, 8)
    assert model.encode(x).shape == (20, 8)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fresh = DeepInfoMax((1, 8, 8), 17, z_dim=8, hidden=16)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    fresh.eval()
    torch.testing.assert_close(fresh.encode(x), model.encode(x))
    ev = model.evaluate(x, generator=torch.Generator().manual_seed(0))
    assert set(ev) == {"loss", "global_mi", "local_mi", "prior_kl"}
    # other image sizes: the local map is pooled to side <= 4
    assert DeepInfoMax((3, 16, 16), None, z_dim=4, hidden=8).features(torch.rand(2, 3, 16, 16))[0].shape == (2, 8, 4, 4)


def test_registry_entry():
    from kexue.data import get_dataset
    from kexue.train.registry import get

    entry = get("infomax")
    assert entry.default_data == "digits"
    model = entry.build(get_dataset("digits", "train", n=10), z_dim=4)
    assert isinstance(model, DeepInfoMax) and model.z_dim == 4


def test_bad_input():
    with pytest.raises(ValueError, match="event_shape must be an image"):
        DeepInfoMax((64,))
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        DeepInfoMax((1, 8, 8), alpha=-1.0)
    with pytest.raises(ValueError, match="z_dim"):
        DeepInfoMax((1, 8, 8), z_dim=0)
    model = DeepInfoMax((1, 8, 8), 17, z_dim=4, hidden=8)
    with pytest.raises(ValueError, match=r"expected images \[B, 1, 8, 8\]"):
        model.loss(torch.zeros(4, 64))
    with pytest.raises(ValueError, match="at least 2 images"):
        model.loss(torch.zeros(1, 1, 8, 8))


@pytest.mark.slow
def test_features_beat_a_random_encoder_on_knn():
    """Local-only DIM (α = 0: Hjelm et al.'s best setting for classification) after 1500 steps
    retrieves digits better than the same, untrained encoder (≈ 93% at k = 1)."""
    xtr, ytr = digits("train")
    xte, yte = digits("test")
    torch.manual_seed(0)
    model = DeepInfoMax((1, 8, 8), 17, alpha=0.0)

    def accuracy():
        model.eval()
        with torch.no_grad():
            acc = knn_accuracy(model.encode(xtr), ytr, model.encode(xte), yte, 1)
        model.train()
        return acc

    random_acc = accuracy()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(1500):
        loss = model.loss(xtr[torch.randint(0, len(xtr), (64,), generator=g)])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert accuracy() > random_acc + 0.01
