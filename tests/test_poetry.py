"""Text data of fixed-length lines, the BN latent, and the CNN-VAE poetry generator: loader
round trips and errors, training on a tiny synthetic corpus, sampling, the BN-VAE KL floor,
importance-sampling terms, state-dict round trip, the registry entry, bad input."""
import io
import os
import random
from pathlib import Path

import pytest
import torch

from kexue.data import Dataset, Vocabulary, get_dataset, load_text_lines
from kexue.data.text import TEXT_TEST_FRACTION, read_lines
from kexue.models.vae.poetry import PoetryVAE, build_poetry_vae
from kexue.nn.bn_latent import BatchNormLatent

POEMS = Path("/work/shared/data/poems/quatrains5.txt")
# Four "themes", each with its own five characters: a poem takes all its characters from one
# theme, so a latent that knows the theme predicts every position (a structure z must carry,
# since the decoder sees nothing else).
THEMES = ["山水云月风", "花草春雨鸟", "酒杯客醉歌", "雪冬寒夜霜"]


def synthetic_poems(n: int, seed: int = 0):
    rng = random.Random(seed)
    poems = []
    for _ in range(n):
        chars = THEMES[rng.randrange(len(THEMES))]
        phrases = ["".join(rng.choice(chars) for _ in range(5)) for _ in range(4)]
        poems.append(f"{phrases[0]}，{phrases[1]}。{phrases[2]}，{phrases[3]}。")
    return poems


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "poems.txt"
    path.write_text("\n".join(synthetic_poems(400)) + "\n", encoding="utf-8")
    return path


def small_poetry_vae(vocab, seed=0, **kw):
    torch.manual_seed(seed)
    return PoetryVAE(vocab, 24, **{"hidden": 32, "latent_dim": 8, **kw})


# ---- text data ---------------------------------------------------------------------------------

def test_text_loader_splits_and_round_trip(corpus):
    lines = read_lines(corpus)
    ids, vocab = load_text_lines(corpus, "all")
    assert ids.shape == (400, 24) and ids.dtype == torch.long
    assert list(vocab.chars) == sorted(set("".join(lines)))
    assert vocab.decode(ids) == lines and vocab.decode(ids[3]) == lines[3]
    for s in lines[:20]:
        assert vocab.decode(vocab.encode(s)) == s
    train, test = get_dataset(corpus, "train"), get_dataset(str(corpus), "test")
    assert len(test.x) == round(400 * TEXT_TEST_FRACTION) and len(train.x) + len(test.x) == 400
    assert train.vocab == test.vocab == vocab and train.n_levels == len(vocab) and train.event_shape == (24,)
    assert set(vocab.decode(train.x)).isdisjoint(vocab.decode(test.x))  # the poems are distinct here
    assert torch.equal(get_dataset(corpus, "test").x, test.x)  # fixed split
    assert torch.equal(get_dataset(corpus, "train", n=5).x, train.x[:5])
    # the Dataset dataclass is backward compatible: vocab defaults to None
    assert Dataset(x=torch.zeros(2, 2), labels=None, n_levels=None, name="t").vocab is None


def test_text_loader_errors(tmp_path, monkeypatch):
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("abcd\nabcd\nabc\nabcd\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3 has 3 characters, but line 1 has 4"):
        load_text_lines(ragged)
    blank = tmp_path / "blank.txt"
    blank.write_text("abcd\n\nabcd\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 has 0 characters"):
        get_dataset(blank)
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes("ab\r\ncd\r\n".encode())
    assert read_lines(crlf) == ["ab", "cd"]
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="no lines"):
        read_lines(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        read_lines(latin)
    one = tmp_path / "one.txt"
    one.write_text("abc\n", encoding="utf-8")
    with pytest.raises(ValueError, match="at least 2 lines"):
        get_dataset(one, "train")
    with pytest.raises(ValueError, match="split must be"):
        load_text_lines(ragged.with_name("one.txt"), "valid")
    with pytest.raises(FileNotFoundError, match="unknown data set .*missing.txt"):
        get_dataset(tmp_path / "missing.txt")
    # paths may name environment variables; an unset one is a clear error
    monkeypatch.setenv("KEXUE_TEST_CORPUS", str(crlf))
    assert get_dataset("$KEXUE_TEST_CORPUS", "all").vocab.decode(torch.tensor([0, 1])) == "ab"
    monkeypatch.delenv("KEXUE_TEST_CORPUS")
    with pytest.raises(ValueError, match="environment variable KEXUE_TEST_CORPUS, which is not set"):
        get_dataset("${KEXUE_TEST_CORPUS}")


def test_vocabulary_errors():
    vocab = Vocabulary("abc")
    with pytest.raises(ValueError, match="distinct"):
        Vocabulary("aba")
    with pytest.raises(ValueError, match="one character"):
        Vocabulary(["ab", "c"])
    with pytest.raises(ValueError, match="'z'.*not in the vocabulary"):
        vocab.encode("abz")
    with pytest.raises(ValueError, match="one length"):
        vocab.encode(["ab", "abc"])
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\)"):
        vocab.decode(torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="integer tensor"):
        vocab.decode(torch.tensor([0.0]))
    assert vocab.encode([]).shape == (0, 0) and vocab.decode(torch.zeros(0, 4, dtype=torch.long)) == []


@pytest.mark.skipif(not POEMS.exists(), reason="the shared poem corpus is not on this machine")
def test_shared_poem_corpus():
    data = get_dataset(POEMS, "all")
    assert data.x.shape == (16691, 24) and len(data.vocab) == 5722  # 5,720 characters plus ，and 。
    assert data.vocab.decode(data.x[723]) == "床前看月光，疑是地上霜。举头望山月，低头思故乡。"
    comma, stop = data.vocab.encode("，。").tolist()
    assert (data.x[:, [5, 17]] == comma).all() and (data.x[:, [11, 23]] == stop).all()


# ---- BN latent ---------------------------------------------------------------------------------

def test_batch_norm_latent_keeps_the_kl_above_its_floor():
    torch.manual_seed(0)
    bn = BatchNormLatent(6, tau=0.3)
    with torch.no_grad():
        bn.theta.copy_(torch.randn(6) * 3)
    for scale in (1e-2, 1.0, 50.0):  # whatever the encoder outputs
        mean, std = bn(torch.randn(256, 6) * scale + 2.0, torch.randn(256, 6) * scale - 1.0)
        var = std.square()
        kl = 0.5 * (mean.square() + var - torch.log(var) - 1).sum(1).mean()
        assert kl >= bn.kl_lower_bound() * (1 - 1e-3)
        torch.testing.assert_close(mean.square().mean(0) + var.mean(0), torch.ones(6), rtol=1e-3, atol=1e-3)
    assert bn.kl_lower_bound() >= 0.5 * bn.mean_scale().square().sum()
    assert bn.kl_lower_bound() >= -0.5 * 6 * torch.log(torch.tensor(0.7))
    with pytest.raises(ValueError, match="tau"):
        BatchNormLatent(4, tau=1.0)
    with pytest.raises(ValueError, match=r"shape \[B, 6\]"):
        bn(torch.zeros(4, 5), torch.zeros(4, 5))


# ---- the poetry VAE ----------------------------------------------------------------------------

def _train(model, x, steps, lr=3e-3, batch=32, seed=0):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        out = model.loss(x[torch.randint(0, len(x), (batch,), generator=g)])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in out.items()})
    return history


def test_poetry_vae_trains_and_generates(corpus):
    data = get_dataset(corpus, "train")
    model = small_poetry_vae(data.vocab)
    history = _train(model, data.x, 60)
    first = sum(h["loss"] for h in history[:5]) / 5
    last = sum(h["loss"] for h in history[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    model.eval()
    ids = model.sample(7, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (7, 24) and ids.dtype == torch.long
    assert torch.equal(ids, model.sample(7, generator=torch.Generator().manual_seed(0)))
    drawn = model.sample(7, generator=torch.Generator().manual_seed(0), greedy=False)
    assert torch.equal(drawn, model.sample(7, generator=torch.Generator().manual_seed(0), greedy=False))
    poems = model.generate(5, generator=torch.Generator().manual_seed(1))
    assert len(poems) == 5 and all(len(p) == 24 and set(p) <= set(data.vocab.chars) for p in poems)
    assert model.decode_text(ids[0]) == data.vocab.decode(ids[0])
    assert torch.equal(model.encode_text(data.vocab.decode(data.x[:3])), data.x[:3])
    stats = model.evaluate(get_dataset(corpus, "test").x)
    assert stats["loss"] == pytest.approx(stats["recon"] + stats["kl"], rel=1e-5)


def test_bn_option_keeps_kl_above_its_floor(corpus):
    data = get_dataset(corpus, "train")
    model = small_poetry_vae(data.vocab, bn=True, tau=0.5)
    history = _train(model, data.x, 25)
    for h in history:
        assert h["kl"] >= h["kl_bound"] * (1 - 1e-3) and h["kl_bound"] >= -0.5 * 8 * torch.log(torch.tensor(0.5))
    plain = small_poetry_vae(data.vocab)
    assert "kl_bound" not in plain.loss(data.x[:4])


def test_importance_terms(corpus):
    from kexue.models.vae.likelihood import log_likelihood

    data = get_dataset(corpus, "test")
    for bn in (False, True):
        model = small_poetry_vae(data.vocab, bn=bn)
        model.eval()
        terms = model.importance_terms(data.x[:6], 5, generator=torch.Generator().manual_seed(0))
        assert terms.shape == (5, 6) and torch.isfinite(terms).all()
        g = torch.Generator().manual_seed(1)
        elbo = -model.negative_elbo(data.x.repeat(20, 1), generator=g)["bound"].mean()
        assert log_likelihood(model, data.x, 20, generator=g).mean() > elbo


def test_state_dict_round_trip_carries_the_vocabulary(corpus):
    data = get_dataset(corpus, "train")
    model = small_poetry_vae(data.vocab, bn=True)
    _train(model, data.x, 3)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    other_chars = [chr(0x4E00 + i) for i in range(len(data.vocab))]  # same size, other characters
    fresh = small_poetry_vae(other_chars, seed=5, bn=True)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert fresh.vocab == data.vocab
    model.eval()
    fresh.eval()
    z = torch.randn(3, 8)
    torch.testing.assert_close(fresh.logits(z), model.logits(z))
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    assert fresh.generate(3, generator=g()) == model.generate(3, generator=g())


def test_registry_entry_and_training_through_kexue_train(corpus, tmp_path, monkeypatch):
    from kexue.train import registry, train

    entry = registry.get("poetry-vae")
    assert entry.default_data == "$KEXUE_POEMS"
    monkeypatch.delenv("KEXUE_POEMS", raising=False)
    with pytest.raises(ValueError, match="KEXUE_POEMS, which is not set"):
        train("poetry-vae", steps=1, batch_size=8, out_dir=tmp_path / "a", progress=False)
    monkeypatch.setenv("KEXUE_POEMS", os.fspath(corpus))
    res = train("poetry-vae", steps=4, batch_size=8, out_dir=tmp_path / "b", progress=False,
                model_kwargs={"hidden": 16, "latent_dim": 4, "bn": True})
    assert {"loss", "recon", "kl", "bits_per_char", "kl_bound"} <= set(res["test"])
    with pytest.raises(ValueError, match="needs a text data set"):
        build_poetry_vae(get_dataset("digits", "test"))


def test_bad_input(corpus):
    vocab = get_dataset(corpus, "all").vocab
    model = small_poetry_vae(vocab)
    with pytest.raises(TypeError, match="integer tensor of character ids"):
        model.loss(torch.zeros(2, 24))
    with pytest.raises(ValueError, match=r"shape \[B, 24\]"):
        model.loss(torch.zeros(2, 23, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, "):
        model.loss(torch.full((2, 24), len(vocab)))
    with pytest.raises(ValueError, match="poems must have 24 characters"):
        model.encode_text("山水")
    with pytest.raises(ValueError, match="n must be"):
        model.sample(-1)
    with pytest.raises(ValueError, match="latent_dim"):
        PoetryVAE(vocab, 24, latent_dim=0)
    with pytest.raises(ValueError, match="odd"):
        PoetryVAE(vocab, 24, kernel_size=2)
    bn_model = small_poetry_vae(vocab, bn=True)
    with pytest.raises(ValueError, match="at least 2 poems"):
        bn_model.loss(get_dataset(corpus, "all").x[:1])
