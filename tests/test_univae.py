"""UniVAE: the decoder side sees the input only through the latents (UniAE mask, hidden [CLS] in
the lower blocks, restarted positions), a short training run on random digit strings with
reconstruction well above chance, seeded sampling, the Gaussian variant, padding, state-dict
round trip, the registry entry, bad input."""
import pytest
import torch
import torch.nn.functional as F

from kexue.data import Dataset, Vocabulary
from kexue.distributions import kl_vmf_uniform
from kexue.models.text.packing import CLS, N_SPECIAL, NO_TOKEN, next_token_labels, pack, wrap
from kexue.models.vae.univae import UniVAE, build_univae

DIGITS = 10
LENGTH = 5


def small_univae(seed=0, **kw):
    torch.manual_seed(seed)
    return UniVAE(DIGITS, **{"dim": 64, "heads": 4, "layers": 3, "latent_dims": (16, 16), "kappa": 64.0,
                             "max_length": LENGTH, **kw})


def digit_strings(n, seed):
    return torch.randint(0, DIGITS, (n, LENGTH), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def trained():
    """A UniVAE trained for 150 steps on random 5-digit strings (about 10 s on one CPU thread):
    nothing but the latents can tell the decoder which digits to write."""
    model = small_univae()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    history = []
    for _ in range(150):
        out = model.loss(torch.randint(0, DIGITS, (64, LENGTH), generator=g))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in out.items()})
    model.eval()
    return model, history


def bump(packed, at):
    """``packed`` with the token at index ``at`` of every row replaced by a different content token."""
    tokens = packed.tokens.clone()
    tokens[:, at] = N_SPECIAL + (tokens[:, at] - N_SPECIAL + 1) % DIGITS
    return packed._replace(tokens=tokens)


def decoder_logits(model, packed, latents=None):
    """Logits at the decoder side's positions ([CLS], x_1, ..., x_n) of packed rows of one layout."""
    h, _, _ = model.run(packed, latents, sample=False)
    start = int(packed.first_lengths[0])
    return model.head(h)[:, start: start + LENGTH + 1]


# ---- the decoder sees the input through the latents only --------------------------------------

def test_decoder_depends_on_the_source_only_through_the_latents():
    # Two blocks below the latent ones: the [CLS] entering the second has read the source, so a
    # leak through the lower blocks' [CLS] would show.
    model = small_univae(seed=1, layers=4, latent_dims=(16, 16)).eval()
    ids = digit_strings(4, 1)
    lengths = torch.full((4,), LENGTH)
    packed = model.pack(ids, lengths)
    latents = model.encode(ids)
    base = decoder_logits(model, packed, latents)
    assert torch.allclose(base, decoder_logits(model, packed), atol=1e-5)  # encode gives the modes the run uses
    for at in (1, 3, LENGTH + 1):  # source tokens and the source [SEP]; not the [CLS] itself
        changed = bump(packed, at)
        # with the latents held fixed, the decoder side is blind to the change ...
        assert torch.allclose(decoder_logits(model, changed, latents), base, atol=1e-5)
        # ... and it sees it through them otherwise (the lower blocks' [CLS] is hidden from it,
        # the top blocks' [CLS] is replaced by the latents)
        assert (decoder_logits(model, changed) - base).abs().max() > 1e-4
    # nor does the source's length reach it: a shorter source, same decoder side, same latents
    copy = wrap(ids, lengths, start=CLS)
    short = wrap(ids[:, :2], torch.full((4,), 2), start=CLS)
    moved = pack(short, torch.full((4,), 4), copy, lengths + 2, restart_positions=True)
    h, _, _ = model.run(moved, latents)
    assert torch.allclose(model.head(h)[:, 4: 4 + LENGTH + 1], base, atol=1e-5)


def test_encoder_side_never_sees_the_decoder_side():
    model = small_univae(seed=2).eval()
    ids = digit_strings(3, 2)
    packed = model.pack(ids, torch.full((3,), LENGTH))
    changed = bump(packed, LENGTH + 4)  # x_2 of the decoder side
    (_, _, a), (_, _, b) = model.run(packed, sample=False), model.run(changed, sample=False)
    for za, zb in zip(a, b):
        assert torch.allclose(za, zb, atol=1e-6)


# ---- training, reconstruction, sampling --------------------------------------------------------

def test_training_reduces_the_loss(trained):
    model, history = trained
    kl = kl_vmf_uniform(16, torch.tensor(64.0)).item() * 2
    assert all(abs(h["kl"] - kl) < 1e-3 for h in history)  # the vMF KL is a constant of kappa and d
    first = sum(h["recon"] for h in history[:10]) / 10
    last = sum(h["recon"] for h in history[-10:]) / 10
    assert first > 10.0 and last < 0.6 * first, (first, last)


def test_reconstruction_is_well_above_chance(trained):
    model, _ = trained
    ids = digit_strings(300, 99)  # fresh strings: no memorisation possible
    out = model.reconstruct(ids)
    assert out.ids.shape == (300, LENGTH)
    accuracy = (out.ids == ids).float().mean().item()
    assert accuracy > 0.3, accuracy  # chance: 0.1 (a language model alone cannot beat it here)


def test_sampling_shapes_and_reproducibility(trained):
    model, _ = trained
    a = model.sample(6, generator=torch.Generator().manual_seed(0))
    b = model.sample(6, generator=torch.Generator().manual_seed(0))
    c = model.sample(6, generator=torch.Generator().manual_seed(1))
    assert a.shape == (6, LENGTH) and a.dtype == torch.long and torch.equal(a, b) and not torch.equal(a, c)
    assert ((a >= 0) & (a < DIGITS) | (a == NO_TOKEN)).all()
    drawn = [model.sample(4, 7, generator=torch.Generator().manual_seed(3), greedy=False, temperature=0.8)
             for _ in range(2)]
    assert drawn[0].shape == (4, 7) and torch.equal(drawn[0], drawn[1])
    assert model.sample(0).shape == (0, LENGTH)
    z = model.sample_prior(5, generator=torch.Generator().manual_seed(0))
    assert [t.shape for t in z] == [(5, 16), (5, 16)]
    assert torch.allclose(torch.linalg.vector_norm(z[0], dim=1), torch.ones(5))  # uniform on the sphere


def test_latents_and_decoding(trained):
    model, _ = trained
    ids = digit_strings(4, 5)
    z = model.encode(ids)
    assert [t.shape for t in z] == [(4, 16), (4, 16)]
    assert torch.allclose(torch.linalg.vector_norm(z[1], dim=1), torch.ones(4), atol=1e-5)
    out = model.decode(z, LENGTH + 1)
    assert torch.equal(out.ids[:, :LENGTH], model.reconstruct(ids).ids)
    # mixing scales: the lower latent of one string with the upper latent of another decodes
    mixed = model.decode([z[0], z[1].flip(0)], LENGTH)
    assert mixed.ids.shape == (4, LENGTH)


def test_padded_rows_encode_as_alone(trained):
    model, _ = trained
    ids = digit_strings(3, 6)
    lengths = torch.tensor([5, 2, 3])
    batch = model.encode((ids, lengths))
    for i in range(3):
        alone = model.encode(ids[i:i + 1, : lengths[i]])
        for zb, za in zip(batch, alone):
            assert torch.allclose(zb[i], za[0], atol=1e-5)
    out = model.loss((ids, lengths))
    assert torch.isfinite(out["loss"])


def test_reconstruction_term_is_the_cross_entropy_of_the_decoder_side():
    """"recon" (computed on the decoder side's window only) equals the summed cross-entropy over
    all positions with the full labels, at the same latent draw, for rows of different lengths."""
    model = small_univae(seed=4)
    ids, lengths = digit_strings(4, 9), torch.tensor([5, 1, 3, 4])
    terms = model.negative_elbo((ids, lengths), generator=torch.Generator().manual_seed(0))
    packed = model.pack(ids, lengths)
    h, _, _ = model.run(packed, generator=torch.Generator().manual_seed(0))
    labels = next_token_labels(packed, DIGITS, from_first=False)
    expected = F.cross_entropy(model.head(h).transpose(1, 2), labels, reduction="none").sum(1)
    assert torch.allclose(terms["recon"], expected, atol=1e-5)
    assert terms["counted"].tolist() == (lengths + 1).tolist()


def test_state_dict_round_trip(trained):
    model, _ = trained
    copy = small_univae(seed=5, kappa=1.0).eval()
    copy.load_state_dict(model.state_dict())
    assert copy.kappa.item() == 64.0
    ids = digit_strings(4, 7)
    for a, b in zip(copy.encode(ids), model.encode(ids)):
        assert torch.allclose(a, b)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(copy.sample(4, generator=g()), model.sample(4, generator=g()))


def test_gaussian_latents():
    model = small_univae(seed=3, latent="gaussian", latent_dims=(8, 4))
    ids = digit_strings(16, 8)
    out = model.loss(ids)
    assert out["kl"] > 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.to_latent[0].weight.grad.abs().sum() > 0  # the KL and the decoder reach the encoder
    z = model.encode(ids)
    assert [t.shape for t in z] == [(16, 8), (16, 4)]
    assert model.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, LENGTH)


# ---- registry and errors -----------------------------------------------------------------------

def test_registry_builder():
    data = Dataset(x=torch.randint(0, 6, (10, 7)), labels=None, n_levels=6, name="t", vocab=Vocabulary("abcdef"))
    model = build_univae(data, dim=32, heads=2, layers=2, latent_dims=[4])
    assert model.vocab_size == 6 and model.max_length == 7 and model.sample(2).shape == (2, 7)
    from kexue.train import registry

    assert registry.get("univae").default_data == "$KEXUE_POEMS"
    with pytest.raises(ValueError, match="text data set"):
        build_univae(Dataset(x=torch.zeros(4, 2), labels=None, n_levels=None, name="moons"))


def test_bad_input():
    with pytest.raises(ValueError, match="at least 3 layers"):
        UniVAE(DIGITS, layers=2, latent_dims=(4, 4))
    with pytest.raises(ValueError, match="latent must be"):
        UniVAE(DIGITS, latent="laplace")
    with pytest.raises(ValueError, match="latent_dims"):
        UniVAE(DIGITS, latent_dims=())
    with pytest.raises(ValueError, match="latent_dims"):
        UniVAE(DIGITS, latent_dims=(1,))  # a vMF latent needs d >= 2
    with pytest.raises(ValueError, match="kappa"):
        UniVAE(DIGITS, kappa=0.0)
    model = small_univae(max_length=None)
    with pytest.raises(ValueError, match="max_len"):
        model.sample(2)
    with pytest.raises(ValueError, match="2 tensors"):
        model.decode([torch.zeros(2, 16)], 3)
    with pytest.raises(ValueError, match=r"latents\[1\]"):
        model.decode([torch.zeros(2, 16), torch.zeros(2, 8)], 3)
    with pytest.raises(ValueError, match="temperature"):
        model.decode(model.sample_prior(2), 3, greedy=False, temperature=0.0)
    with pytest.raises(TypeError, match="integer tensor"):
        model.loss(torch.zeros(2, LENGTH))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        model.loss(torch.full((2, LENGTH), DIGITS))
    with pytest.raises(ValueError, match="lengths"):
        model.loss((digit_strings(2, 0), torch.tensor([LENGTH + 1, 1])))
    with pytest.raises(TypeError, match="tuple"):
        model.loss([digit_strings(2, 0)])
