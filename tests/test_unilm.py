"""UniLM seq2seq: the packed [CLS] source [SEP] target [SEP] layout, what the UniLM mask lets each
position see, a short training run on string reversal with greedy and beam decoding, decoding of
sources of different lengths in one batch, state-dict round trip, the registry entry, bad input."""
import math

import pytest
import torch

from kexue.data import Dataset, Vocabulary
from kexue.models.text.packing import CLS, IGNORE, NO_TOKEN, PAD, SEP, next_token_labels, pack, prediction_window, wrap
from kexue.models.text.unilm import UniLM, build_unilm

DIGITS = 10
WIDTH = 6


def reversal_task(n, generator, min_len=3, width=WIDTH):
    """Random digit strings of lengths min_len..width (right-padded with 0) and their reversals."""
    source = torch.randint(0, DIGITS, (n, width), generator=generator)
    lengths = torch.randint(min_len, width + 1, (n,), generator=generator)
    j = torch.arange(width)[None, :]
    real = j < lengths[:, None]
    target = source.gather(1, (lengths[:, None] - 1 - j).clamp(min=0))
    return torch.where(real, source, 0), torch.where(real, target, 0), lengths


def small_unilm(seed=0, **kw):
    torch.manual_seed(seed)
    return UniLM(DIGITS, **{"dim": 64, "heads": 4, "layers": 2, **kw})


def correct_rows(out, target, lengths):
    """Rows whose generated ids are exactly the target (and that ended right after it)."""
    j = torch.arange(target.shape[1])[None, :]
    want = torch.where(j < lengths[:, None], target, NO_TOKEN)
    return (out.lengths == lengths) & out.finished & (out.ids[:, : target.shape[1]] == want).all(1) \
        & (out.ids[:, target.shape[1]:] == NO_TOKEN).all(1)


@pytest.fixture(scope="module")
def trained():
    """A UniLM trained for 150 steps on reversal (about 6 s on one CPU thread), with its losses."""
    model = small_unilm()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        source, target, lengths = reversal_task(64, g)
        loss = model.loss((source, target, lengths, lengths))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return model, losses


# ---- layout ------------------------------------------------------------------------------------

def test_packed_layout_and_labels():
    source, source_len = torch.tensor([[4, 5, 6], [7, 8, 0]]), torch.tensor([3, 2])
    target, target_len = torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 1])
    first = wrap(source, source_len, start=CLS)
    assert first.tolist() == [[CLS, 7, 8, 9, SEP], [CLS, 10, 11, SEP, PAD]]
    second = wrap(target, target_len, start=None)
    p = pack(first, source_len + 2, second, target_len + 1)
    assert p.tokens.tolist() == [[CLS, 7, 8, 9, SEP, 4, 5, SEP], [CLS, 10, 11, SEP, 6, SEP, PAD, PAD]]
    assert p.segment_ids.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]]
    assert p.positions.tolist() == [list(range(8))] * 2 and p.lengths.tolist() == [8, 6]
    labels = next_token_labels(p, DIGITS, from_first=True)
    x = IGNORE
    # the source [SEP] predicts the first target token, the last target token predicts END = 10
    assert labels.tolist() == [[x, x, x, x, 1, 2, 10, x], [x, x, x, 3, 10, x, x, x]]
    idx, window = prediction_window(p, labels, -1, 3)  # from each source [SEP], target width + 1
    assert idx.tolist() == [[4, 5, 6], [3, 4, 5]] and window.tolist() == [[1, 2, 10], [3, 10, x]]
    restarted = pack(first, source_len + 2, first, source_len + 2, restart_positions=True)
    assert restarted.positions[1].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]
    assert next_token_labels(restarted, DIGITS, from_first=False)[1].tolist() == [x, x, x, x, 7, 8, 10, x, x, x]


def test_model_splits_plain_rows_in_half():
    model = small_unilm(layers=1)
    rows = torch.arange(8).view(1, 8)
    source, target, sl, tl = model.split(rows)
    assert source.tolist() == [[0, 1, 2, 3]] and target.tolist() == [[4, 5, 6, 7]]
    assert sl.tolist() == [4] and tl.tolist() == [4]
    model.source_length = 3
    assert model.split(rows)[0].tolist() == [[0, 1, 2]]
    assert torch.allclose(model.loss(rows)["loss"], model.loss((rows[:, :3], rows[:, 3:]))["loss"])


def test_loss_is_the_cross_entropy_of_every_target_prediction():
    """The loss (computed on the prediction window only) equals the cross-entropy over all
    positions of the packed rows with the full labels, for rows of different lengths."""
    model = small_unilm(layers=1)
    source, target, lengths = reversal_task(5, torch.Generator().manual_seed(3))
    target_lengths = (lengths - 1).clamp(min=1)
    packed = model.pack(source, target, lengths, target_lengths)
    labels = next_token_labels(packed, DIGITS, from_first=True)
    expected = torch.nn.functional.cross_entropy(model.logits(packed).flatten(0, 1), labels.flatten())
    assert torch.allclose(model.loss((source, target, lengths, target_lengths))["loss"], expected, atol=1e-6)
    per_row = torch.nn.functional.cross_entropy(model.logits(packed).transpose(1, 2), labels, reduction="none").sum(1)
    assert torch.allclose(model.log_prob(source, target, lengths, target_lengths), -per_row, atol=1e-5)


# ---- the UniLM mask ----------------------------------------------------------------------------

def test_unilm_mask_visibility():
    """A target token is seen by later targets only; a source token by every position; padding
    by none."""
    model = small_unilm().eval()
    g = torch.Generator().manual_seed(1)
    source, target, lengths = reversal_task(4, g, min_len=WIDTH)
    packed = model.pack(source, target, lengths, lengths)
    base = model.logits(packed)
    at = 1 + WIDTH + 1 + 2  # the third target token
    changed = packed._replace(tokens=packed.tokens.clone())
    changed.tokens[:, at] = 3 + (changed.tokens[:, at] - 3 + 1) % DIGITS
    out = model.logits(changed)
    diff = (out - base).abs().amax(dim=(0, 2))
    assert diff[:at].max() < 1e-5  # the source and the earlier targets do not see it
    assert (diff[at:packed.lengths[0]] > 1e-4).all()  # it and every later target do
    changed = packed._replace(tokens=packed.tokens.clone())
    changed.tokens[:, 2] = 3 + (changed.tokens[:, 2] - 3 + 1) % DIGITS  # a source token
    diff = (model.logits(changed) - base).abs().amax(dim=(0, 2))
    assert (diff[: packed.lengths[0]] > 1e-4).all()
    # anything past a row's length is hidden
    longer = model.pack(torch.cat([source, source], 1), target, lengths, lengths)
    real = int(packed.lengths[0])
    assert torch.allclose(model.logits(longer)[:, :real], base[:, :real], atol=1e-5)


# ---- training and decoding ---------------------------------------------------------------------

def test_training_reduces_the_loss(trained):
    _, losses = trained
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert first > 2.0 and last < 0.25 * first, (first, last)


def test_greedy_decoding_reverses_held_out_strings(trained):
    model, _ = trained
    source, target, lengths = reversal_task(200, torch.Generator().manual_seed(123))
    out = model.generate(source, WIDTH + 2, source_lengths=lengths)
    assert out.ids.shape == (200, WIDTH + 2) and out.ids.dtype == torch.long
    accuracy = correct_rows(out, target, lengths).float().mean().item()
    assert accuracy > 0.8, accuracy


def test_beam_one_is_greedy_and_beams_never_score_below_greedy(trained):
    model, _ = trained
    source, _, lengths = reversal_task(100, torch.Generator().manual_seed(7))
    greedy = model.generate(source, WIDTH + 2, source_lengths=lengths)
    one = model.generate(source, WIDTH + 2, source_lengths=lengths, beam=1, length_penalty=1.0)
    for a, b in zip(greedy, one):
        assert torch.equal(a, b)
    four = model.generate(source, WIDTH + 2, source_lengths=lengths, beam=4)
    assert (four.log_prob >= greedy.log_prob - 1e-5).all()
    # the scores are the model's log-probabilities of the returned sequences
    for out in (greedy, four):
        assert out.finished.all()
        rescored = model.log_prob(source, out.ids.clamp(min=0), lengths, out.lengths)
        assert torch.allclose(rescored, out.log_prob, atol=1e-4)


def test_beam_search_beats_greedy_on_an_undertrained_model():
    """Where greedy decoding is poor, a beam finds more probable outputs (never less probable
    ones here; beam search is approximate, so this is measured, not a theorem)."""
    model = small_unilm(seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(5)
    for _ in range(30):
        source, target, lengths = reversal_task(64, g)
        loss = model.loss((source, target, lengths, lengths))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    source, _, lengths = reversal_task(64, torch.Generator().manual_seed(8))
    greedy = model.generate(source, WIDTH + 3, source_lengths=lengths)
    beam = model.generate(source, WIDTH + 3, source_lengths=lengths, beam=5)
    finished = greedy.finished & beam.finished
    assert finished.float().mean() > 0.5
    gain = beam.log_prob[finished] - greedy.log_prob[finished]
    assert (gain >= -1e-5).all() and (gain > 1e-3).any()
    rescored = model.log_prob(source, beam.ids.clamp(min=0), lengths, beam.lengths)
    assert torch.allclose(rescored[beam.finished], beam.log_prob[beam.finished], atol=1e-4)
    normalised = model.generate(source, WIDTH + 3, source_lengths=lengths, beam=5, length_penalty=1.0)
    kept = normalised.finished
    rescored = model.log_prob(source, normalised.ids.clamp(min=0), lengths, normalised.lengths)
    assert torch.allclose(rescored[kept], normalised.log_prob[kept], atol=1e-4)


def test_batched_sources_of_different_lengths_decode_as_alone(trained):
    model, _ = trained
    source, _, lengths = reversal_task(6, torch.Generator().manual_seed(11))
    for beam in (1, 3):
        batch = model.generate(source, WIDTH + 2, source_lengths=lengths, beam=beam)
        for i in range(len(source)):
            alone = model.generate(source[i:i + 1, : lengths[i]], WIDTH + 2, beam=beam)
            n = alone.ids.shape[1]
            assert torch.equal(batch.ids[i, :n], alone.ids[0]) and batch.lengths[i] == alone.lengths[0]
            assert math.isclose(batch.log_prob[i].item(), alone.log_prob[0].item(), abs_tol=1e-4)


def test_generation_stops_at_max_len(trained):
    model, _ = trained
    source, _, lengths = reversal_task(5, torch.Generator().manual_seed(2), min_len=WIDTH)
    out = model.generate(source, 2)
    assert out.ids.shape == (5, 2) and (out.lengths == 2).all() and not out.finished.any()


def test_state_dict_round_trip(trained):
    model, _ = trained
    copy = small_unilm(seed=99).eval()
    copy.load_state_dict(model.state_dict())
    source, target, lengths = reversal_task(8, torch.Generator().manual_seed(4))
    args = (source, target, lengths, lengths)
    assert torch.allclose(copy.log_prob(*args), model.log_prob(*args))
    assert torch.equal(copy.generate(source, 8, source_lengths=lengths, beam=2).ids,
                       model.generate(source, 8, source_lengths=lengths, beam=2).ids)


# ---- registry and errors -----------------------------------------------------------------------

def test_registry_builder_splits_lines_in_half():
    vocab = Vocabulary("abcdef")
    data = Dataset(x=torch.randint(0, 6, (10, 8)), labels=None, n_levels=6, name="t", vocab=vocab)
    model = build_unilm(data, dim=32, heads=2, layers=1)
    assert model.vocab_size == 6 and model.source_length == 4
    assert build_unilm(data, dim=32, heads=2, layers=1, source_length=2).source_length == 2
    from kexue.train import registry

    assert registry.get("unilm").default_data == "$KEXUE_POEMS"
    with pytest.raises(ValueError, match="text data set"):
        build_unilm(Dataset(x=torch.zeros(4, 2), labels=None, n_levels=None, name="moons"))


def test_bad_input():
    model = small_unilm(layers=1)
    ids = torch.randint(0, DIGITS, (2, 4))
    with pytest.raises(TypeError, match="integer tensor"):
        model.loss(ids.float())
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        model.loss(ids[0])
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        model.loss(ids + DIGITS)
    with pytest.raises(TypeError, match="tuple"):
        model.loss((ids, ids, ids))
    with pytest.raises(ValueError, match="same batch size"):
        model.loss((ids, ids[:1]))
    with pytest.raises(ValueError, match="source_lengths"):
        model.loss((ids, ids, torch.tensor([5, 1]), torch.tensor([1, 1])))
    with pytest.raises(ValueError, match="no target"):
        UniLM(DIGITS, dim=32, heads=2, layers=1, source_length=4).loss(ids)
    with pytest.raises(ValueError, match="max_len"):
        model.generate(ids, 0)
    with pytest.raises(ValueError, match="beam"):
        model.generate(ids, 3, beam=0)
    with pytest.raises(ValueError, match="length_penalty"):
        model.generate(ids, 3, beam=2, length_penalty=-1.0)
    with pytest.raises(ValueError, match="even"):
        UniLM(DIGITS, dim=30, heads=10)
    with pytest.raises(ValueError, match="vocab_size"):
        UniLM(0)
