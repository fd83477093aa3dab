"""Sentence matching models: vocabulary, bi-encoder and cross-encoder trained with CoSENT,
STS-B reading and evaluation helpers."""
import io
import os
from pathlib import Path

import pytest
import torch

from kexue.models.text import (
    BiEncoder,
    ConvEncoder,
    CrossEncoder,
    PairData,
    StsPairs,
    Vocabulary,
    Whitening,
    build_biencoder,
    cosine_spearman,
    evaluate_sts,
    load_sts_dir,
    load_sts_tsv,
    pool,
    score_pairs,
    spearman,
    spearman_eval,
    tokenize,
    train_pairs,
)

CONCEPTS = 20


def synthetic_pairs(n, seed):
    """Pairs of 4–8 words over 20 concepts, each written in one of two synonymous forms ("a7",
    "b7"); the second sentence keeps a random share of the first's concepts (each in a random
    form) and the gold score is that share (0..5). Word overlap alone sees only part of it: a
    model must learn that the two forms mean the same."""
    g = torch.Generator().manual_seed(seed)

    def word(c):
        return f"{'ab'[int(torch.randint(0, 2, (1,), generator=g))]}{c}"

    first, second, gold = [], [], []
    for _ in range(n):
        length = int(torch.randint(4, 9, (1,), generator=g))
        a = torch.randint(0, CONCEPTS, (length,), generator=g).tolist()
        keep = int(torch.randint(0, length + 1, (1,), generator=g))
        b = a[:keep] + torch.randint(0, CONCEPTS, (length - keep,), generator=g).tolist()
        first.append(" ".join(map(word, a)))
        second.append(" ".join(map(word, b)))
        gold.append(5.0 * keep / length)
    return first, second, torch.tensor(gold)


def test_tokenize_and_vocabulary():
    assert tokenize("Hello, World! 3.5 km") == ["hello", ",", "world", "!", "3", ".", "5", "km"]
    assert tokenize("我爱NLP。") == ["我", "爱", "nlp", "。"]
    vocab = Vocabulary.build(["a b b c", "b c c c"], min_count=2)
    assert vocab.tokens == ["<pad>", "<unk>", "c", "b"]
    ids = vocab.encode(["c b a", "", "b"])
    assert ids.tolist() == [[2, 3, 1], [1, 0, 0], [3, 0, 0]]  # unknown → 1, empty → one <unk>, pad 0
    assert vocab.encode(["c b a"], max_len=2).tolist() == [[2, 3]]
    assert Vocabulary.from_state_dict(vocab.state_dict()).tokens == vocab.tokens
    assert len(Vocabulary.build(["x y z w"], max_size=4)) == 4
    with pytest.raises(TypeError, match="single string"):
        vocab.encode("c b")
    with pytest.raises(ValueError, match="first two tokens"):
        Vocabulary(["a", "b"])
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build(["a"], min_count=0)


def test_pooling_and_padding_do_not_leak():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(pool(states, mask, "mean"), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(pool(states, mask, "max"), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(pool(states, mask, "first"), torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="how must be"):
        pool(states, mask, "cls")
    torch.manual_seed(0)
    for layers in (0, 2):
        model = BiEncoder(ConvEncoder(30, 16, layers=layers, dropout=0.0), "mean").eval()
        ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
        padded = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
        torch.testing.assert_close(model(padded), model(ids))


def test_cross_encoder_ignores_padding_and_checks_input():
    torch.manual_seed(0)
    model = CrossEncoder(30, dim=16, layers=1, heads=2, dropout=0.0).eval()
    a, b = torch.tensor([[5, 6, 7], [8, 0, 0]]), torch.tensor([[9, 10], [5, 8]])
    pad = torch.zeros(2, 2, dtype=torch.long)
    s = model.score(a, b)
    assert s.shape == (2,) and (s.abs() < 1).all()
    torch.testing.assert_close(model.score(torch.cat([a, pad], 1), torch.cat([b, pad], 1)), s)
    flags = CrossEncoder._exact_match(torch.tensor([[5, 6, 1]]), torch.tensor([[6, 1, 0]]))
    assert flags.tolist() == [[0, 0, 1, 0, 0, 1, 0, 0]]  # [CLS] 5 6 <unk> [SEP] 6 <unk> <pad>
    with pytest.raises(ValueError, match="LongTensor"):
        model.score(a.float(), b)
    with pytest.raises(ValueError, match="2 first sentences but 1"):
        model.score(a, b[:1])
    with pytest.raises(ValueError, match="divisible"):
        CrossEncoder(30, dim=10, heads=4)


@pytest.mark.parametrize("kind", ["bi", "cross"])
def test_training_lowers_the_loss_and_ranks_pairs(kind):
    first, second, gold = synthetic_pairs(600, 0)
    vocab = Vocabulary.build(first + second)
    data = PairData.from_texts(vocab, first, second, gold)
    t_first, t_second, t_gold = synthetic_pairs(200, 1)
    test = PairData.from_texts(vocab, t_first, t_second, t_gold)

    def build():
        torch.manual_seed(0)
        if kind == "bi":
            return build_biencoder(vocab, dim=32, layers=1)
        return CrossEncoder(len(vocab), dim=32, layers=1, heads=2, vocab=vocab)

    @torch.no_grad()
    def held_out(model):
        model.eval()
        return float(model.loss(test.batch(torch.arange(len(test))))["loss"]), spearman(score_pairs(model, test).double(), t_gold)

    model = build()
    loss_before, rho_before = held_out(model)
    losses = train_pairs(model, data, 200, 32, 3e-3, torch.Generator().manual_seed(0))
    loss_after, rho_after = held_out(model)
    assert loss_after < 0.97 * loss_before
    assert sum(losses[-20:]) < sum(losses[:20])
    assert rho_after > 0.45 and rho_after > rho_before + 0.15
    # the same seeds give the same run
    again = train_pairs(build(), data, 5, 32, 3e-3, torch.Generator().manual_seed(0))
    assert again == losses[:5]
    # state_dict round trip
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fresh = build()
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    torch.testing.assert_close(score_pairs(fresh, test), score_pairs(model, test))
    # raw-text helpers agree with the id path
    pairs = StsPairs(t_first, t_second, t_gold.double())
    assert abs(spearman_eval(model, pairs) - rho_after) < 1e-6


def test_train_pairs_checks_its_arguments():
    first, second, gold = synthetic_pairs(10, 0)
    vocab = Vocabulary.build(first + second)
    data = PairData.from_texts(vocab, first, second, gold)
    model = build_biencoder(vocab, dim=8)
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_pairs(model, data, 3, batch_size=64)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        train_pairs(model, data, 3, batch_size=1)
    with pytest.raises(ValueError, match=r"ids_a \[N, La\]"):
        PairData(data.ids_a, data.ids_b[:5], gold)
    with pytest.raises(RuntimeError, match="no vocabulary"):
        BiEncoder(ConvEncoder(10, 4)).encode_texts(["a"])
    with pytest.raises(ValueError, match="pooling"):
        BiEncoder(ConvEncoder(10, 4), pooling="sum")


def test_load_sts_tsv_and_evaluate(tmp_path):
    good = tmp_path / "sts-dev.tsv"
    good.write_text("2.500\tA man plays.\tA man is playing.\n0.0\tCats.\tDogs run.\n5\tx\tx\n", encoding="utf-8")
    pairs = load_sts_tsv(good)
    assert pairs.first == ["A man plays.", "Cats.", "x"] and pairs.second[1] == "Dogs run."
    torch.testing.assert_close(pairs.scores, torch.tensor([2.5, 0.0, 5.0], dtype=torch.float64))
    bad = tmp_path / "bad.tsv"
    bad.write_text("1.0\tonly two fields\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv:1: expected 3 tab-separated fields"):
        load_sts_tsv(bad)
    bad.write_text("high\ta\tb\n", encoding="utf-8")
    with pytest.raises(ValueError, match="must be a number"):
        load_sts_tsv(bad)
    with pytest.raises(ValueError, match="lacks sts-train.tsv"):
        load_sts_dir(tmp_path)
    # evaluate_sts: Spearman of cosines, with and without a fitted whitening
    g = torch.Generator().manual_seed(0)
    a, b, gold = torch.randn(50, 6, generator=g), torch.randn(50, 6, generator=g), torch.randn(50, generator=g)
    assert evaluate_sts(a, b, gold) == cosine_spearman(a, b, gold)
    w = Whitening().fit(torch.cat([a, b]))
    assert evaluate_sts(a, b, gold, w) == cosine_spearman(w.transform(a), w.transform(b), gold)
    # spearman_eval accepts a plain embedding function
    table = {s: torch.randn(4, generator=g) for s in set(pairs.first + pairs.second)}
    fn = lambda texts: torch.stack([table[t] for t in texts])  # noqa: E731
    assert spearman_eval(fn, pairs) == evaluate_sts(fn(pairs.first), fn(pairs.second), pairs.scores)
    with pytest.raises(ValueError, match="3 pairs but 2 gold"):
        spearman_eval(fn, pairs, torch.zeros(2))


@pytest.mark.skipif(not os.environ.get("KEXUE_STSB"), reason="set KEXUE_STSB to the STS-B tsv directory")
def test_real_stsb_files_load():
    splits = load_sts_dir(Path(os.environ["KEXUE_STSB"]))
    assert {k: len(v) for k, v in splits.items()} == {"train": 5749, "dev": 1500, "test": 1379}
    for p in splits.values():
        assert float(p.scores.min()) >= 0 and float(p.scores.max()) <= 5
