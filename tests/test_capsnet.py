"""CapsNet: shapes, training on the digits, the overlapping-digits experiment, bad input."""
import io

import pytest
import torch

from kexue.models.capsules import CapsNet, margin_loss, overlapping_digits, top2_accuracy


def test_margin_loss_formula():
    lengths = torch.tensor([[0.95, 0.05, 0.5]])
    loss = margin_loss(lengths, torch.tensor([0]))
    torch.testing.assert_close(loss, torch.tensor([0.5 * (0.5 - 0.1) ** 2]))
    multi = margin_loss(lengths, torch.tensor([[1.0, 0.0, 1.0]]))
    torch.testing.assert_close(multi, torch.tensor([(0.9 - 0.5) ** 2]))


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("squash", ["sabour", "post"])
def test_shapes_and_training(shared, squash):
    from kexue.data import load_digits

    x, y = load_digits("train")
    torch.manual_seed(0)
    model = CapsNet(conv_channels=32, primary_caps=8, shared_transform=shared, squash=squash)
    v = model.capsules(x[:4])
    assert v.shape == (4, 10, 16)
    _, c = model.capsules(x[:4], return_couplings=True)
    torch.testing.assert_close(c.sum(-1), torch.ones(4, model.n_primary))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        idx = torch.randint(0, len(x), (64,))
        loss = model.loss((x[idx], y[idx]))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 * 0.8


def test_overlapping_digits_and_state_dict():
    from kexue.data import load_digits

    x, y = load_digits("test")
    imgs, pairs = overlapping_digits(x, y, 50)
    assert imgs.shape == (50, 1, 8, 8) and (pairs[:, 0] != pairs[:, 1]).all()
    torch.manual_seed(0)
    model = CapsNet(conv_channels=16, primary_caps=4)
    acc = top2_accuracy(model, imgs, pairs)
    assert 0.0 <= acc <= 1.0
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fresh = CapsNet(conv_channels=16, primary_caps=4)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    fresh.eval()
    model.eval()
    torch.testing.assert_close(fresh(x[:5]), model(x[:5]))


def test_bad_input():
    with pytest.raises(ValueError, match="8×8 or 28×28"):
        CapsNet((1, 16, 16))
    model = CapsNet(conv_channels=8, primary_caps=2)
    with pytest.raises(ValueError, match=r"expected images \[B, 1, 8, 8\]"):
        model(torch.zeros(2, 8, 8))


def test_spread_loss_formula():
    from kexue.models.capsules import spread_loss

    a = torch.tensor([[0.9, 0.5, 0.1]])
    # i = 1: max(0, 0.8 - 0.4)^2 = 0.16; i = 2: max(0, 0.8 - 0.8)^2 = 0
    torch.testing.assert_close(spread_loss(a, torch.tensor([0]), 0.8), torch.tensor([0.16]))


def test_matrix_capsnet_trains_and_round_trips():
    from kexue.data import load_digits
    from kexue.models.capsules import MatrixCapsNet

    x, y = load_digits("train")
    torch.manual_seed(0)
    model = MatrixCapsNet(conv_channels=16, primary_types=4, conv_types=4, margin_steps=50)
    a = model(x[:3])
    assert a.shape == (3, 10) and ((a > 0) & (a < 1)).all()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    accs = []
    for _ in range(60):
        idx = torch.randint(0, len(x), (64,))
        out = model.loss((x[idx], y[idx]))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        accs.append(out["acc"].item())
    assert sum(accs[-10:]) / 10 > 0.4  # chance is 0.1
    assert int(model.step) == 60 and abs(model.margin() - 0.9) < 1e-9
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fresh = MatrixCapsNet(conv_channels=16, primary_types=4, conv_types=4, margin_steps=50)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    torch.testing.assert_close(fresh(x[:5]), model(x[:5]))
    assert int(fresh.step) == 60
    with pytest.raises(ValueError, match="expected images"):
        model(torch.zeros(2, 1, 6, 6))
    strided = MatrixCapsNet(conv_channels=8, primary_types=2, conv_types=2, kernel=2, stride=2)
    assert strided.side2 == 2 and strided(x[:2]).shape == (2, 10)
    with pytest.raises(ValueError, match="too small"):
        MatrixCapsNet(kernel=5)
