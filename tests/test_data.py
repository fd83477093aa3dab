"""kexue.data: toy densities (samplers, exact densities, entropies), digits, .npy images."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kexue.data import (
    DIGITS_LEVELS,
    TOY_NAMES,
    Dataset,
    get_dataset,
    load_digits,
    load_npy_images,
    toy_2d,
    toy_entropy,
    toy_log_prob,
)
from kexue.data import toys


# --- toy densities -------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_shape_dtype_and_range(name):
    x = toy_2d(name, 1000)
    assert x.shape == (1000, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    # All toys are drawn to share one box, so one model configuration fits them all.
    assert x.abs().max() < 3.5
    assert toy_2d(name, 0).shape == (0, 2)


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_seeded_and_global_rng_untouched(name):
    state = torch.get_rng_state()
    a, b, c = toy_2d(name, 500, seed=1), toy_2d(name, 500, seed=1), toy_2d(name, 500, seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_toy_bad_arguments():
    with pytest.raises(ValueError, match="moons.*checkerboard.*rings"):
        toy_2d("swissroll", 10)
    with pytest.raises(ValueError, match="non-negative"):
        toy_2d("moons", -1)
    # Seeds beyond 32 bits would alias smaller ones in torch's generator.
    for seed in (-1, 2**32):
        with pytest.raises(ValueError, match="seed"):
            toy_2d("moons", 10, seed=seed)
    with pytest.raises(ValueError, match="valid names"):
        toy_entropy("nope")
    with pytest.raises(ValueError, match="valid names"):
        toy_log_prob("nope", torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        toy_log_prob("8gaussians", torch.zeros(4, 3))


def test_checkerboard_samples_on_black_squares():
    x = toy_2d("checkerboard", 20000, seed=3)
    assert ((x >= -2) & (x < 2)).all()
    cell = torch.floor(x).long()
    assert ((cell.sum(1) % 2) == 0).all()
    # The 8 black squares are equally likely (20000/8 = 2500 each, binomial std ≈ 47).
    counts = torch.unique(cell, dim=0, return_counts=True)[1]
    assert len(counts) == 8 and ((counts - 2500).abs() < 250).all()
    assert torch.equal(toy_log_prob("checkerboard", x), torch.full((20000,), -math.log(8)))


def test_checkerboard_log_prob_off_support():
    white_or_outside = torch.tensor([[-1.5, -0.5], [0.5, -0.5], [2.5, 2.5], [-3.0, -1.5]])
    assert torch.isneginf(toy_log_prob("checkerboard", white_or_outside)).all()


def test_eight_gaussians_components():
    x = toy_2d("8gaussians", 40000, seed=4).double()
    centres = toys._gaussian_centres(torch.float64)
    radius = torch.full((8,), toys.GAUSSIANS_RADIUS, dtype=torch.float64)
    assert torch.allclose(centres.norm(dim=1), radius)
    std = torch.full((2,), toys.GAUSSIANS_STD, dtype=torch.float64)
    nearest = torch.cdist(x, centres).argmin(1)
    for k in range(8):
        xk = x[nearest == k]
        assert abs(len(xk) - 5000) < 400
        # Standard error of a component mean is 0.1/sqrt(5000) ≈ 0.0014.
        assert torch.allclose(xk.mean(0), centres[k], atol=0.01)
        assert torch.allclose(xk.std(0), std, rtol=0.05)


def test_eight_gaussians_log_prob_normalised():
    step = 0.01
    axis = torch.arange(-3, 3, step, dtype=torch.float64) + step / 2
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1)
    mass = toy_log_prob("8gaussians", grid).exp().sum().item() * step**2
    assert mass == pytest.approx(1.0, abs=1e-6)


def test_log_prob_unknown_density():
    for name in ("moons", "circles", "spirals", "rings"):
        with pytest.raises(NotImplementedError):
            toy_log_prob(name, torch.zeros(3, 2))
        assert toy_entropy(name) is None


def test_entropies():
    assert toy_entropy("checkerboard") == pytest.approx(math.log(8), abs=1e-12)
    h = toy_entropy("8gaussians")
    # The modes are ~15 std apart, so the entropy is that of one gaussian plus log 8 to far
    # better than float64 precision: an independent check of the quadrature.
    separated = math.log(8) + 1 + math.log(2 * math.pi * toys.GAUSSIANS_STD**2)
    assert h == pytest.approx(separated, abs=1e-10)
    nll = -toy_log_prob("8gaussians", toy_2d("8gaussians", 100000, seed=5).double())
    se = nll.std().item() / math.sqrt(len(nll))
    assert abs(nll.mean().item() - h) < 3 * se


# --- get_dataset on toys --------------------------------------------------------------------


def test_get_dataset_toy_splits():
    train, test = get_dataset("moons"), get_dataset("moons", "test")
    assert isinstance(train, Dataset)
    assert train.x.shape == (20000, 2) and test.x.shape == (5000, 2)
    assert train.labels is None and train.n_levels is None and train.name == "moons"
    assert train.event_shape == (2,)
    assert torch.equal(train.x, toy_2d("moons", 20000, seed=0))
    # Same size, same seed argument: the test set must still be a different draw.
    small_train = get_dataset("moons", "train", n=100, seed=7)
    small_test = get_dataset("moons", "test", n=100, seed=7)
    assert not torch.isin(small_test.x, small_train.x).all(dim=1).any()


def test_get_dataset_toy_errors():
    with pytest.raises(ValueError, match="'train' and 'test'"):
        get_dataset("rings", "all")
    for seed in (-1, 2**31):
        with pytest.raises(ValueError, match="seed"):
            get_dataset("rings", seed=seed)


def test_get_dataset_unknown():
    for bad in ("mnist", "images.png", "Moons"):
        with pytest.raises(ValueError, match="digits.*npy") as info:
            get_dataset(bad)
        assert all(name in str(info.value) for name in TOY_NAMES)


# --- digits ---------------------------------------------------------------------------------


def test_digits_splits():
    pytest.importorskip("sklearn")
    train, test, everything = (load_digits(s) for s in ("train", "test", "all"))
    assert [len(s[0]) for s in (train, test, everything)] == [1500, 297, 1797]
    for images, labels in (train, test, everything):
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 8, 8)
        assert labels.dtype == torch.long and len(labels) == len(images)
        assert int(images.max()) <= DIGITS_LEVELS - 1 and set(labels.tolist()) == set(range(10))
    # Train and test partition the whole set: as multisets of (image, label) rows they add up.
    def rows(images, labels):
        return sorted(map(tuple, torch.cat([images.flatten(1), labels[:, None]], 1).tolist()))

    split_rows = rows(*train) + rows(*test)
    assert sorted(split_rows) == rows(*everything)
    # The split is fixed forever: results on it stay comparable across versions.
    assert test[1][:12].tolist() == [2, 2, 9, 8, 8, 3, 6, 0, 4, 4, 7, 6]


def test_digits_split_indices_disjoint():
    from kexue.data.images import _digits_split_indices

    train = set(_digits_split_indices(1797, "train"))
    test = set(_digits_split_indices(1797, "test"))
    assert not train & test and len(train | test) == 1797


def test_digits_dataset():
    pytest.importorskip("sklearn")
    ds = get_dataset("digits", "test")
    assert ds.x.shape == (297, 1, 8, 8) and ds.n_levels == DIGITS_LEVELS == 17
    assert ds.event_shape == (1, 8, 8) and ds.name == "digits" and len(ds.labels) == 297
    few = get_dataset("digits", n=10)
    assert few.x.shape[0] == 10 and few.labels.shape == (10,)
    with pytest.raises(ValueError, match="out of range"):
        get_dataset("digits", "test", n=298)
    with pytest.raises(ValueError, match="split"):
        load_digits("validation")


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits()


# --- .npy images ----------------------------------------------------------------------------


def _save(tmp_path: Path, a: np.ndarray, name: str = "imgs.npy") -> Path:
    path = tmp_path / name
    np.save(path, a)
    return path


def test_npy_layouts(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    x, levels = load_npy_images(_save(tmp_path, gray))
    assert x.dtype == torch.uint8 and levels == 256 and torch.equal(x[:, 0], torch.from_numpy(gray))

    nchw = rng.integers(0, 10, (5, 3, 6, 7), dtype=np.int16)
    x, levels = load_npy_images(str(_save(tmp_path, nchw)))
    assert x.dtype == torch.long and levels == int(nchw.max()) + 1
    assert torch.equal(x, torch.from_numpy(nchw).long())

    nhwc = rng.random((5, 6, 7, 4))
    x, levels = load_npy_images(_save(tmp_path, nhwc))
    assert x.shape == (5, 4, 6, 7) and x.dtype == torch.float32 and levels is None
    assert x.is_contiguous()
    assert torch.allclose(x, torch.from_numpy(nhwc.transpose(0, 3, 1, 2)).float())

    single = rng.random((5, 1, 6, 7), dtype=np.float32)
    x, _ = load_npy_images(_save(tmp_path, single))
    assert x.shape == (5, 1, 6, 7)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((5, 6), np.uint8), "shape"),
        (np.zeros((2, 3, 4, 5, 6), np.uint8), "shape"),
        (np.zeros((2, 5, 6, 7), np.uint8), "channel axis"),
        (np.zeros((0, 6, 7), np.uint8), "no images"),
        (np.full((2, 6, 7), -1, np.int32), "non-negative"),
        (np.full((2, 6, 7), 1.5), r"\[0, 1\]"),
        (np.full((2, 6, 7), -0.1, np.float32), r"\[0, 1\]"),
        (np.full((2, 6, 7), np.nan), "NaN"),
        (np.zeros((2, 6, 7), bool), "dtype"),
        (np.zeros((2, 6, 7), np.complex64), "dtype"),
    ],
)
def test_npy_rejects(tmp_path, array, message):
    path = _save(tmp_path, array, "bad.npy")
    with pytest.raises(ValueError, match=message) as info:
        load_npy_images(path)
    assert "bad.npy" in str(info.value)


def test_npy_rejects_object_and_npz(tmp_path):
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([np.zeros(3), "x"], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy"):
        load_npy_images(obj)
    archive = tmp_path / "archive.npy"
    with open(archive, "wb") as f:  # an .npz archive wearing a .npy name
        np.savez(f, a=np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="archive.npy.*single"):
        load_npy_images(archive)


def test_npy_dataset_splits(tmp_path):
    images = np.arange(20 * 4 * 4, dtype=np.uint8).reshape(20, 4, 4)
    path = _save(tmp_path, images, "faces.npy")
    train, test, everything = (get_dataset(path, s) for s in ("train", "test", "all"))
    assert (len(train.x), len(test.x), len(everything.x)) == (18, 2, 20)
    assert torch.equal(torch.cat([train.x, test.x]), everything.x)
    assert torch.equal(test.x[:, 0], torch.from_numpy(images[18:]))
    assert train.n_levels == 256 and train.labels is None and train.name == "faces"
    assert train.event_shape == (1, 4, 4)
    assert len(get_dataset(str(path), n=5).x) == 5

    tiny = _save(tmp_path, images[:1], "tiny.npy")
    with pytest.raises(ValueError, match="too few"):
        get_dataset(tiny, "train")
    with pytest.raises(ValueError, match="split"):
        get_dataset(path, "valid")


def test_npy_vectors(tmp_path):
    from kexue.data import get_dataset, load_npy_vectors

    emb = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float64) * 7
    path = tmp_path / "emb.npy"
    np.save(path, emb)
    v = load_npy_vectors(path)
    assert v.dtype == torch.float32 and v.shape == (50, 6)
    train, test = get_dataset(str(path), "train"), get_dataset(str(path), "test")
    assert train.event_shape == (6,) and train.n_levels is None and len(train.x) == 45 and len(test.x) == 5
    for bad, match in [(np.zeros((3, 2), dtype=np.int64), "floating point"), (np.array([[np.nan, 1.0]]), "NaN"),
                       (np.zeros((0, 4)), "no vectors")]:
        np.save(path, bad)
        with pytest.raises(ValueError, match=match):
            load_npy_vectors(path)
