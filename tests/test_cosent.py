"""CoSENT: the O(n log n) loss against the post's n×n formula (values and gradients), ties,
edge cases, numerics, bad input."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue.models.text import cosent_loss, cosent_loss_dense, pair_cosine


def brute_force(cos, gold, scale=20.0):
    """The formula term by term in Python floats: log(1 + Σ_{g_p > g_q} exp(λ(c_q − c_p)))."""
    total = 1.0
    for p in range(len(cos)):
        for q in range(len(cos)):
            if gold[p] > gold[q]:
                total += math.exp(scale * (cos[q] - cos[p]))
    return math.log(total)


def random_batch(n, levels, seed, device="cpu", dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    cos = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1).to(device, dtype)
    gold = torch.randint(0, levels, (n,), generator=g).to(device)  # few levels: many ties
    return cos, gold


@pytest.mark.parametrize("n,levels", [(2, 2), (7, 3), (40, 5), (64, 64), (200, 6)])
def test_matches_dense_formula_and_its_gradient(device, n, levels):
    for seed in range(3):
        cos, gold = random_batch(n, levels, seed, device)
        cos.requires_grad_(True)
        fast, dense = cosent_loss(cos, gold), cosent_loss_dense(cos, gold)
        torch.testing.assert_close(fast, dense, rtol=1e-12, atol=1e-12)
        (g_fast,) = torch.autograd.grad(fast, cos)
        (g_dense,) = torch.autograd.grad(dense, cos)
        torch.testing.assert_close(g_fast, g_dense, rtol=1e-10, atol=1e-12)


def test_matches_brute_force_with_graded_scores():
    g = torch.Generator().manual_seed(1)
    cos = torch.rand(12, generator=g, dtype=torch.float64) * 2 - 1
    gold = torch.tensor([0.0, 2.5, 2.5, 5.0, 1.2, 1.2, 1.2, 3.8, 0.0, 4.4, 2.5, 3.8], dtype=torch.float64)
    assert abs(float(cosent_loss(cos, gold)) - brute_force(cos.tolist(), gold.tolist())) < 1e-12


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-1, 1), st.integers(0, 4)), min_size=0, max_size=25),
       st.sampled_from([1.0, 5.0, 20.0]))
def test_property_against_brute_force(pairs, scale):
    cos = torch.tensor([c for c, _ in pairs], dtype=torch.float64)
    gold = torch.tensor([s for _, s in pairs], dtype=torch.long)
    expected = brute_force(cos.tolist(), gold.tolist(), scale)
    assert abs(float(cosent_loss(cos, gold, scale)) - expected) < 1e-9 * max(1.0, expected)


def test_gradcheck():
    cos, gold = random_batch(9, 3, 0)
    cos.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: cosent_loss(c, gold, 3.0), (cos,))


def test_only_the_order_of_gold_matters():
    cos, gold = random_batch(30, 4, 2)
    base = cosent_loss(cos, gold)
    torch.testing.assert_close(cosent_loss(cos, gold.double().exp() * 3 - 7), base)  # monotone map
    torch.testing.assert_close(cosent_loss(cos, gold == 3), cosent_loss(cos, (gold == 3).long()))  # bool labels
    # permuting the pairs changes nothing
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cosent_loss(cos[perm], gold[perm]), base)


def test_edge_cases_give_zero_and_backpropagate():
    for n in (0, 1):
        cos = torch.zeros(n, requires_grad=True)
        loss = cosent_loss(cos, torch.zeros(n))
        assert loss.item() == 0.0
        loss.backward()
        assert cos.grad.shape == (n,) and (cos.grad == 0).all()
    cos = torch.randn(10, requires_grad=True)
    loss = cosent_loss(cos, torch.full((10,), 3.0))  # no ordered pair at all
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(cos.grad).all() and (cos.grad == 0).all()


def test_stable_for_large_scale_and_low_precision():
    cos, gold = random_batch(50, 5, 3)
    big = cosent_loss(cos, gold, scale=1e4)  # exp(λ·Δcos) overflows any direct evaluation
    assert torch.isfinite(big) and abs(float(big) - float(cosent_loss_dense(cos, gold, 1e4))) < 1e-9 * float(big)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        low = cosent_loss(cos.to(dtype), gold)
        assert low.dtype == dtype
        ref = cosent_loss(cos.to(dtype).double(), gold)  # the same inputs, exact arithmetic
        assert abs(float(low) - float(ref)) <= 1e-2 * float(ref) + 1e-3


def test_loss_falls_when_cosines_follow_the_gold_order():
    gold = torch.arange(20.0)
    aligned = torch.linspace(-1, 1, 20)
    assert cosent_loss(aligned, gold) < cosent_loss(aligned.flip(0), gold)
    # each of the 190 ordered pairs has a cosine gap of at least 2/19: every term ≤ exp(−20·2/19)
    assert cosent_loss(aligned, gold) <= math.log(1 + 190 * math.exp(-40 / 19))
    assert cosent_loss(aligned.flip(0), gold) >= math.log(1 + math.exp(40 / 19))


def test_pair_cosine_and_bad_input():
    u, v = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(pair_cosine(u, v), torch.nn.functional.cosine_similarity(u, v))
    with pytest.raises(ValueError, match=r"cos \[n\] and gold \[n\]"):
        cosent_loss(torch.randn(4), torch.randn(5))
    with pytest.raises(ValueError, match=r"cos \[n\] and gold \[n\]"):
        cosent_loss(torch.randn(4, 2), torch.randn(4, 2))
    with pytest.raises(TypeError, match="floating point"):
        cosent_loss(torch.arange(4), torch.arange(4))
    with pytest.raises(ValueError, match="scale"):
        cosent_loss(torch.randn(4), torch.arange(4), scale=0.0)
    with pytest.raises(ValueError, match="scale"):
        cosent_loss(torch.randn(4), torch.arange(4), scale=float("inf"))
    with pytest.raises(TypeError, match="tensors"):
        cosent_loss([0.1, 0.2], torch.arange(2))
    with pytest.raises(ValueError, match=r"\[n, D\]"):
        pair_cosine(torch.randn(5, 3), torch.randn(4, 3))
