import io

import pytest
import torch

from kexue.models.text import Whitening, cosine_spearman, rankdata, spearman


def anisotropic(n=2000, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g)
    return torch.randn(n, d, generator=g) @ a + 3.0


def test_whitened_vectors_have_identity_covariance():
    x = anisotropic()
    w = Whitening().fit(x)
    y = w.transform(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(16), atol=1e-4, rtol=0)
    cov = (y - y.mean(0)).t() @ (y - y.mean(0)) / y.shape[0]
    torch.testing.assert_close(cov, torch.eye(16), atol=1e-3, rtol=0)


def test_truncation_keeps_top_directions():
    x = anisotropic()
    full, k4 = Whitening().fit(x).transform(x), Whitening(k=4).fit(x).transform(x)
    assert k4.shape == (2000, 4)
    torch.testing.assert_close(k4, full[:, :4])
    # the kept directions are those of the largest variance
    xc = x - x.mean(0)
    ev = torch.linalg.eigvalsh(xc.t() @ xc / x.shape[0]).flip(0)
    w = Whitening(k=4).fit(x)
    proj_var = ((xc @ w.kernel) * torch.sqrt(ev[:4])).var(0, unbiased=False)
    torch.testing.assert_close(proj_var, ev[:4], rtol=1e-3, atol=1e-3)


def test_state_dict_round_trip_and_errors():
    x = anisotropic()
    w = Whitening(k=8).fit(x)
    buf = io.BytesIO()
    torch.save(w.state_dict(), buf)
    w2 = Whitening(k=8)
    w2.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    torch.testing.assert_close(w2.transform(x), w.transform(x))
    with pytest.raises(RuntimeError, match="fit"):
        Whitening().transform(x)
    with pytest.raises(ValueError, match="exceeds"):
        Whitening(k=20).fit(x)
    with pytest.raises(ValueError, match="k must be"):
        Whitening(k=0)
    with pytest.raises(ValueError, match="NaN"):
        Whitening().fit(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"expects \[N, 16\]"):
        w.transform(torch.randn(3, 5))


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 10, (200,), generator=g).double()  # many ties
    b = a + torch.randn(200, generator=g, dtype=torch.float64) * 3
    assert abs(spearman(a, b) - stats.spearmanr(a.numpy(), b.numpy()).statistic) < 1e-12
    torch.testing.assert_close(rankdata(a), torch.from_numpy(stats.rankdata(a.numpy())))
    u, v = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    gold = torch.randn(50, generator=g)
    cos = torch.nn.functional.cosine_similarity(u, v).double().numpy()
    assert abs(cosine_spearman(u, v, gold) - stats.spearmanr(cos, gold.numpy()).statistic) < 1e-9
