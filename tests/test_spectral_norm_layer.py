"""kexue.nn.spectral_norm as a drop-in for torch's parametrization; the regulariser; WGAN-GP."""
import copy

import pytest
import torch
from torch import nn

from kexue.nn.spectral_norm import gradient_penalty, spectral_norm, spectral_norm_regularizer


@pytest.mark.parametrize("make", [lambda: nn.Linear(20, 12), lambda: nn.Conv2d(3, 8, 3)])
def test_same_as_torch_parametrization(make):
    torch.manual_seed(0)
    base = make()
    theirs = torch.nn.utils.parametrizations.spectral_norm(copy.deepcopy(base))
    ours = spectral_norm(copy.deepcopy(base))
    ours.load_state_dict(theirs.state_dict())  # same buffers and keys
    for _ in range(3):  # training mode: each access is one power-iteration step
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-5, atol=1e-6)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-5, atol=1e-6)
    assert set(ours.state_dict()) == set(theirs.state_dict())


def test_soft_bound_with_coeff():
    torch.manual_seed(0)
    big = nn.Linear(10, 10)
    with torch.no_grad():
        big.weight.mul_(10)
    layer = spectral_norm(big, coeff=0.9)
    for _ in range(30):
        w = layer.weight
    assert abs(torch.linalg.matrix_norm(w.detach(), 2).item() - 0.9) < 1e-3
    small = spectral_norm(nn.Linear(10, 10), coeff=50.0)  # already below the bound: unchanged
    torch.testing.assert_close(small.weight, small.parametrizations.weight.original)


def test_conv_operator_norm():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    shape = (2, 5, 5)
    # the convolution as an explicit matrix on flattened inputs
    basis = torch.eye(50).view(50, *shape)
    mat = nn.functional.conv2d(basis, conv.weight, padding=1).flatten(1).t()
    true_norm = torch.linalg.matrix_norm(mat, 2).item()
    layer = spectral_norm(conv, input_shape=shape, n_power_iterations=50)
    w = layer.weight.detach()
    mat_sn = nn.functional.conv2d(basis, w, padding=1).flatten(1).t()
    assert abs(torch.linalg.matrix_norm(mat_sn, 2).item() - 1.0) < 1e-3
    assert true_norm > 1.0  # (so the normalisation did something)


def test_regularizer_approaches_sum_of_squared_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Conv1d(1, 2, 3), nn.Linear(5, 4))
    for _ in range(60):
        reg = spectral_norm_regularizer(model, lam=0.5)
    exact = sum(torch.linalg.matrix_norm(m.weight.detach().flatten(1), 2) ** 2
                for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d)))
    torch.testing.assert_close(reg.detach(), 0.5 * exact, rtol=1e-4, atol=1e-5)
    reg.backward()
    assert all(m.weight.grad is not None for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d)))
    with pytest.raises(ValueError, match="no Linear or Conv"):
        spectral_norm_regularizer(nn.ReLU())


def test_gradient_penalty():
    w = torch.tensor([0.6, 0.8])  # unit norm: the critic's gradient norm is 1 everywhere
    critic = lambda x: x @ w
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    assert gradient_penalty(critic, real, fake).item() < 1e-10
    critic2 = lambda x: 3 * x @ w
    torch.testing.assert_close(gradient_penalty(critic2, real, fake, lam=10.0), torch.tensor(40.0))
    with pytest.raises(ValueError, match="differ in shape"):
        gradient_penalty(critic, real, fake[:3])


def test_bad_arguments():
    with pytest.raises(ValueError, match="coeff must be positive"):
        spectral_norm(nn.Linear(3, 3), coeff=0.0)
    with pytest.raises(ValueError, match="no parameter or buffer named"):
        spectral_norm(nn.Linear(3, 3), name="kernel")
    with pytest.raises(ValueError, match="n_power_iterations"):
        spectral_norm(nn.Linear(3, 3), n_power_iterations=0)
