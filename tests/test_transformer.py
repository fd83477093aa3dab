"""MultiHeadAttention, Transformer blocks and stacks (pre-LN, post-LN, DeepNorm), the MLM head and
masker with the dropout-consistency option: shapes, formulas, mask semantics, training, bad input."""
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kexue.nn import (MLMEmbeddingMasker, MLMHead, MultiHeadAttention, RoPE, TransformerBlock, TransformerStack,
                      deepnorm_coefficients, mlm_mask_tokens)

DIM, HEADS = 32, 4


# --- attention layer ---------------------------------------------------------------------------

def test_attention_shapes_and_gqa_projections():
    mha = MultiHeadAttention(DIM, HEADS, kv_heads=2, rope=RoPE(DIM // HEADS))
    assert mha.k_proj.weight.shape == (2 * DIM // HEADS, DIM) and mha.q_proj.weight.shape == (DIM, DIM)
    x, memory = torch.randn(3, 5, DIM), torch.randn(3, 7, DIM)
    assert mha(x).shape == (3, 5, DIM)
    assert MultiHeadAttention(DIM, HEADS)(x, kv=memory).shape == (3, 5, DIM)


def test_attention_equals_per_head_computation():
    torch.manual_seed(0)
    hd, kvh = DIM // HEADS, 2
    rope = RoPE(hd, layout="interleaved")
    mha = MultiHeadAttention(DIM, HEADS, kv_heads=kvh, rope=rope, bias=True).double()
    x = torch.randn(2, 6, DIM, dtype=torch.float64)
    got = mha(x, causal=True)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    heads = []
    for h in range(HEADS):
        g = h // (HEADS // kvh)
        rows_q, rows_kv = slice(h * hd, (h + 1) * hd), slice(g * hd, (g + 1) * hd)
        q = x @ mha.q_proj.weight[rows_q].T + mha.q_proj.bias[rows_q]
        k = x @ mha.k_proj.weight[rows_kv].T + mha.k_proj.bias[rows_kv]
        v = x @ mha.v_proj.weight[rows_kv].T + mha.v_proj.bias[rows_kv]
        q, k = rope(q), rope(k)
        logits = (q @ k.transpose(1, 2) / math.sqrt(hd)).masked_fill(~causal, float("-inf"))
        heads.append(logits.softmax(-1) @ v)
    want = mha.o_proj(torch.cat(heads, -1))
    torch.testing.assert_close(got, want)


# --- blocks ------------------------------------------------------------------------------------

def test_deepnorm_coefficients_and_init():
    alpha, beta = deepnorm_coefficients(6)
    assert alpha == pytest.approx(12 ** 0.25) and beta == pytest.approx(48 ** -0.25)
    assert deepnorm_coefficients(1) == pytest.approx((2 ** 0.25, 8 ** -0.25))
    torch.manual_seed(0)
    dim = 128
    block = TransformerBlock(dim, 4, norm="deepnorm", depth=6)
    assert (block.alpha, block.beta) == (alpha, beta)

    def xavier_std(w, gain):
        return gain * math.sqrt(2.0 / (w.shape[0] + w.shape[1]))

    for w, gain in [(block.attn.q_proj.weight, 1.0), (block.attn.k_proj.weight, 1.0), (block.attn.v_proj.weight, beta),
                    (block.attn.o_proj.weight, beta), (block.ffn.up.weight, beta), (block.ffn.down.weight, beta)]:
        assert w.std().item() == pytest.approx(xavier_std(w, gain), rel=0.05)
    pre = TransformerBlock(dim, 4, norm="pre")
    assert pre.ffn.up.weight.std().item() == pytest.approx(xavier_std(pre.ffn.up.weight, 1.0), rel=0.05)


@pytest.mark.parametrize("norm", ["pre", "post", "deepnorm"])
def test_block_residual_arrangement(norm):
    torch.manual_seed(0)
    block = TransformerBlock(DIM, HEADS, kv_heads=2, norm=norm, depth=4, rope=RoPE(DIM // HEADS)).double()
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    kw = {"causal": True, "key_lengths": torch.tensor([5, 3])}
    attn = lambda h: block.attn(h, **kw)  # noqa: E731
    if norm == "pre":
        h = x + attn(block.norm1(x))
        want = h + block.ffn(block.norm2(h))
    else:
        a = (2 * 4) ** 0.25 if norm == "deepnorm" else 1.0
        h = block.norm1(a * x + attn(x))
        want = block.norm2(a * h + block.ffn(h))
    torch.testing.assert_close(block(x, **kw), want)


@pytest.mark.parametrize("norm", ["pre", "post", "deepnorm"])
def test_stack_hidden_states_and_state_dict(norm):
    torch.manual_seed(0)
    stack = TransformerStack(DIM, HEADS, 3, kv_heads=1, norm=norm, rope=RoPE(DIM // HEADS)).eval()
    x = torch.randn(2, 5, DIM)
    out, hidden = stack(x, causal=True, return_all=True)
    assert len(hidden) == 4 and hidden[0] is x and all(h.shape == x.shape for h in hidden)
    torch.testing.assert_close(out, stack.final_norm(hidden[-1]))
    if norm != "pre":
        assert out is hidden[-1]
    torch.testing.assert_close(stack(x, causal=True), out)
    buf = io.BytesIO()
    torch.save(stack.state_dict(), buf)
    fresh = TransformerStack(DIM, HEADS, 3, kv_heads=1, norm=norm, rope=RoPE(DIM // HEADS)).eval()
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    torch.testing.assert_close(fresh(x, causal=True), out)


def _changed(a, b):
    return (a - b).abs().amax(-1) > 1e-6  # per position


def test_masks_control_what_each_position_reads():
    torch.manual_seed(0)
    stack = TransformerStack(DIM, HEADS, 2, rope=RoPE(DIM // HEADS)).eval()
    x = torch.randn(1, 8, DIM)
    y = x.clone()
    y[:, 5:] += torch.randn(1, 3, DIM)  # perturb the last three positions (not by a constant: LayerNorm removes it)
    # causal: earlier positions cannot see the change
    changed = _changed(stack(x, causal=True), stack(y, causal=True))[0]
    assert not changed[:5].any() and changed[5:].all()
    # padding: keys past key_lengths are invisible to every query
    kl = torch.tensor([5])
    assert not _changed(stack(x, key_lengths=kl), stack(y, key_lengths=kl))[0, :5].any()
    # UniLM: the source (first 5) does not read the target
    seg = (torch.arange(8) >= 5).long().unsqueeze(0)
    changed = _changed(stack(x, segment_ids=seg), stack(y, segment_ids=seg))[0]
    assert not changed[:5].any() and changed[5:].all()
    # UniAE (one layer): a target token reads the source only through position 0
    one = TransformerStack(DIM, HEADS, 1, rope=RoPE(DIM // HEADS)).eval()
    z = x.clone()
    z[:, 1:5] += torch.randn(1, 4, DIM)
    changed = _changed(one(x, segment_ids=seg, mask_rule="uniae"), one(z, segment_ids=seg, mask_rule="uniae"))[0]
    assert changed[:5].all() and not changed[5:].any()
    z[:, 0] += torch.randn(1, DIM)
    assert _changed(one(x, segment_ids=seg, mask_rule="uniae"), one(z, segment_ids=seg, mask_rule="uniae"))[0, 5:].all()


def arithmetic_sequences(n, length, vocab, generator):
    """x_t = (a + t·step) mod vocab: a model must read the step from the context."""
    start = torch.randint(vocab, (n, 1), generator=generator)
    step = torch.randint(1, 4, (n, 1), generator=generator)
    return (start + step * torch.arange(length)) % vocab


class TinyLM(nn.Module):
    def __init__(self, vocab, norm):
        super().__init__()
        self.embed = nn.Embedding(vocab, DIM)
        self.stack = TransformerStack(DIM, HEADS, 2, kv_heads=2, norm=norm, rope=RoPE(DIM // HEADS))
        self.out = nn.Linear(DIM, vocab)

    def forward(self, tokens, **kw):
        return self.out(self.stack(self.embed(tokens), **kw))


@pytest.mark.parametrize("norm", ["pre", "post", "deepnorm"])
def test_tiny_causal_lm_trains(norm):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    vocab = 16
    model = TinyLM(vocab, norm)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        seq = arithmetic_sequences(32, 12, vocab, g)
        logits = model(seq[:, :-1], causal=True)
        loss = F.cross_entropy(logits.reshape(-1, vocab), seq[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("kwargs,match", [
    ({"norm": "sandwich"}, "norm must be one of"),
    ({"norm": "deepnorm"}, "needs depth"),
    ({"heads": 5}, "divisible by heads"),
    ({"kv_heads": 3}, "multiple of kv_heads"),
    ({"rope": RoPE(16)}, "rope must rotate the head dim 8"),
    ({"ffn_mult": 0}, "ffn_mult"),
    ({"dropout": 1.0}, "dropout"),
])
def test_bad_block_arguments(kwargs, match):
    args = {"dim": DIM, "heads": HEADS}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        TransformerBlock(**args)


def test_bad_layer_inputs():
    mha = MultiHeadAttention(DIM, HEADS)
    with pytest.raises(ValueError, match=r"x must have shape \[B, L, 32\]"):
        mha(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"kv must have shape \[2, Lk, 32\]"):
        mha(torch.randn(2, 5, DIM), kv=torch.randn(3, 4, DIM))
    with pytest.raises(ValueError, match="layers must be a positive int"):
        TransformerStack(DIM, HEADS, 0)
    with pytest.raises(ValueError, match="mask_rule"):
        mha(torch.randn(2, 5, DIM), segment_ids=torch.zeros(2, 5, dtype=torch.long), mask_rule="x")


# --- MLM ---------------------------------------------------------------------------------------

PAD, CLS, SEP, MASK, VOCAB = 0, 1, 2, 3, 1000


def make_masker(consistency="none", dim=16):
    torch.manual_seed(0)
    emb = nn.Embedding(VOCAB, dim, padding_idx=PAD)
    return MLMEmbeddingMasker(emb, MASK, special_token_ids=(CLS, SEP), consistency=consistency)


def test_masking_statistics_and_specials():
    masker = make_masker()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, VOCAB, (400, 500), generator=g)
    tokens[:, 0], tokens[:, -1], tokens[:, -3:-1] = CLS, SEP, PAD
    inputs, targets = masker.mask(tokens, generator=torch.Generator().manual_seed(1))
    special = tokens < 4
    selected = targets != -100
    assert not selected[special].any() and torch.equal(inputs[special], tokens[special])
    assert torch.equal(targets[selected], tokens[selected])
    assert torch.equal(inputs[~selected], tokens[~selected])
    n = selected.sum().item()
    assert n / (~special).sum().item() == pytest.approx(0.15, abs=0.003)
    masked = (inputs[selected] == MASK).float().mean().item()
    replaced = ((inputs[selected] != MASK) & (inputs[selected] != tokens[selected])).float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.01)
    assert replaced == pytest.approx(0.1 * (1 - 1 / (VOCAB - 4)), abs=0.008)
    assert (inputs[selected & (inputs != MASK)] >= 4).all()  # random replacements are never special
    again, _ = masker.mask(tokens, generator=torch.Generator().manual_seed(1))
    other, _ = masker.mask(tokens, generator=torch.Generator().manual_seed(2))
    assert torch.equal(again, inputs) and not torch.equal(other, inputs)


def test_training_and_eval_outputs():
    masker = make_masker("none")
    tokens = torch.randint(4, VOCAB, (4, 30))
    emb, targets = masker(tokens, generator=torch.Generator().manual_seed(0))
    inputs, again = masker.mask(tokens, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(emb, masker.embedding(inputs))
    assert torch.equal(targets, again)
    masker.eval()
    emb, targets = masker(tokens)
    assert targets is None
    torch.testing.assert_close(emb, masker.embedding(tokens))


def test_expectation_correction_is_the_training_mean():
    masker = make_masker("expectation")
    weight = masker.embedding.weight.detach()
    c_t, c_mask, c_mean = masker.expectation_coefficients()
    assert (c_t, c_mask, c_mean) == pytest.approx((0.865, 0.12, 0.015))
    mean_random = weight[4:].mean(0)  # random replacements: uniform over the non-special ids
    tokens = torch.tensor([[CLS, 10, 500, SEP, PAD]])
    masker.eval()
    got, _ = masker(tokens)
    want = c_t * weight[tokens[0]] + c_mask * weight[MASK] + c_mean * mean_random
    want[[0, 3, 4]] = weight[tokens[0, [0, 3, 4]]]  # specials are never corrupted, so never corrected
    torch.testing.assert_close(got[0], want)
    torch.testing.assert_close(F.embedding(tokens, masker.expected_embedding_weight()), got)
    # Monte Carlo: the mean training-time embedding of token 10 is the corrected one
    masker.train()
    draws, _ = masker(torch.full((200000,), 10), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws.mean(0), got[0, 1], rtol=0, atol=0.01)


def test_mlm_head_tied_and_loss():
    emb = nn.Embedding(50, 16)
    head = MLMHead(16, 50, embedding=emb)
    assert head.weight is emb.weight and head.decoder_weight is None
    assert sum(p.numel() for p in head.parameters()) == 16 * 16 + 16 + 2 * 16 + 50 * 16 + 50
    hidden = torch.randn(2, 7, 16)
    targets = torch.full((2, 7), -100)
    targets[0, 3], targets[1, 5] = 4, 9
    loss = head.loss(hidden, targets)
    logits = head(hidden)
    assert logits.shape == (2, 7, 50)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1)))
    empty = head.loss(hidden.requires_grad_(), torch.full((2, 7), -100))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(hidden.grad).all()
    assert MLMHead(16, 50).weight.shape == (50, 16)


def test_tiny_mlm_trains():
    torch.manual_seed(0)
    vocab, g = 20, torch.Generator().manual_seed(3)
    emb = nn.Embedding(vocab + 4, DIM)
    masker = MLMEmbeddingMasker(emb, MASK, special_token_ids=(PAD, CLS, SEP), mask_prob=0.3,
                                consistency="expectation")
    stack = TransformerStack(DIM, HEADS, 2, rope=RoPE(DIM // HEADS))
    head = MLMHead(DIM, vocab + 4, embedding=emb)
    opt = torch.optim.Adam(nn.ModuleList([masker, stack, head]).parameters(), lr=3e-3)  # the tied matrix once
    losses = []
    for _ in range(40):
        tokens = arithmetic_sequences(32, 12, vocab, g) + 4
        x, targets = masker(tokens, generator=g)
        loss = head.loss(stack(x), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


def test_bad_mlm_arguments():
    emb = nn.Embedding(10, 4)
    with pytest.raises(ValueError, match="consistency must be one of"):
        MLMEmbeddingMasker(emb, 3, consistency="inverted")
    with pytest.raises(ValueError, match="mask_prob must be a probability"):
        MLMEmbeddingMasker(emb, 3, mask_prob=1.5)
    with pytest.raises(ValueError, match="mask_ratio \\+ random_ratio must be <= 1"):
        MLMEmbeddingMasker(emb, 3, mask_ratio=0.8, random_ratio=0.3)
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 10\)"):
        MLMEmbeddingMasker(emb, 12)
    with pytest.raises(TypeError, match="nn.Embedding"):
        MLMEmbeddingMasker(nn.Linear(4, 4), 3)
    with pytest.raises(TypeError, match="integer tensor"):
        MLMEmbeddingMasker(emb, 3)(torch.rand(2, 3))
    with pytest.raises(ValueError, match=r"tied embedding must be \[50, 16\]"):
        MLMHead(16, 50, embedding=emb)
    with pytest.raises(ValueError, match="targets must have shape"):
        MLMHead(4, 10).loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        mlm_mask_tokens(torch.zeros(3, dtype=torch.long), mask_token_id=1,
                        random_token_ids=torch.tensor([], dtype=torch.long))
    with pytest.raises(TypeError, match="random_token_ids must be an integer tensor"):
        mlm_mask_tokens(torch.zeros(3, dtype=torch.long), mask_token_id=1, random_token_ids=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="maskable must be a bool tensor"):
        mlm_mask_tokens(torch.zeros(3, dtype=torch.long), mask_token_id=1, random_token_ids=torch.tensor([2]),
                        maskable=torch.ones(3))
