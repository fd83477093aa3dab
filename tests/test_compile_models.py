"""One training step of one model per family under torch.compile(fullgraph=True, dynamic=True):
the loss compiles without a graph break, its backward reaches every trainable parameter, and a
second batch size reuses the graph (at most one recompile)."""
import pytest
import torch
from torch._dynamo.utils import counters

from kexue.data import get_dataset

from conftest import HAS_CUDA, HAS_SIMT, on_backend

BATCHES = (7, 11)  # sizes no model dimension shares (dynamo would identify equal sizes)


def _digits(n):
    return get_dataset("digits", "train", n=n).x.clone()


def _labelled(n):
    d = get_dataset("digits", "train", n=n)
    return d.x.clone(), d.labels.clone()


def _toy(n):
    return get_dataset("moons", "train", n=n).x.clone()


def _text(n):
    return torch.randint(0, 10, (n, 5), generator=torch.Generator().manual_seed(n))


def _models():
    from kexue.models.capsules import CapsNet, MatrixCapsNet
    from kexue.models.diffusion import build_ddpm
    from kexue.models.flows import Glow, IResNet
    from kexue.models.gan import SNGAN
    from kexue.models.text.unilm import UniLM
    from kexue.models.vae import VAE
    from kexue.models.vae.nvae import NVAE
    from kexue.models.vae.univae import UniVAE
    from kexue.nn import RoPE, TransformerBlock

    class Block(TransformerBlock):
        def loss(self, x):
            return self(x).square().mean()

    return {
        "glow": (lambda: Glow((1, 8, 8), 17, levels=2, depth=2, hidden=16), _digits),
        "iresnet": (lambda: IResNet((2,), None, n_blocks=2, hidden=16, n_terms=3), _toy),
        "capsnet": (lambda: CapsNet(conv_channels=16, primary_caps=4), _labelled),
        "matrixcaps": (lambda: MatrixCapsNet(conv_channels=8, primary_types=2, conv_types=2, margin_steps=50),
                       _labelled),
        "ddpm": (lambda: build_ddpm(get_dataset("moons", "train", n=64), T=50, hidden=16, blocks=1), _toy),
        "vae": (lambda: VAE((1, 8, 8), 17, hidden=64, layers=1, latent_dim=4), _digits),
        "nvae": (lambda: NVAE((1, 8, 8), 17, channels=8, latent_channels=2, groups_per_scale=(1, 2), expand=2),
                 _digits),
        "sngan": (lambda: SNGAN((1, 8, 8), 17, latent_dim=4, hidden=16), _digits),
        "unilm": (lambda: UniLM(10, dim=32, heads=2, layers=1), _text),
        "univae": (lambda: UniVAE(10, dim=32, heads=2, layers=3, latent_dims=(4, 4), max_length=5), _text),
        "transformer_block": (lambda: Block(32, heads=4, kv_heads=2, rope=RoPE(8)),
                              lambda n: torch.randn(n, 6, 32, generator=torch.Generator().manual_seed(n))),
    }


def _loss(out):
    return out["loss"] if isinstance(out, dict) else out


def _to(batch, device):
    return tuple(t.to(device) for t in batch) if isinstance(batch, tuple) else batch.to(device)


# Every family on the CPU and on CUDA; on the emulator (CUDA kernels inside the compiled graph)
# the families with the most kernels, as it is slower.
SIMT_MODELS = ("capsnet", "glow", "transformer_block")
CASES = ([(name, "cpu") for name in sorted(_models())]
         + [pytest.param(name, "simt", marks=[pytest.mark.simt, pytest.mark.skipif(not HAS_SIMT, reason="no emulator")])
            for name in SIMT_MODELS]
         + [pytest.param(name, "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no GPU")])
            for name in sorted(_models())])


@pytest.mark.parametrize("name,backend", CASES)
def test_training_step_compiles_fullgraph(name, backend):
    build, data_cpu = _models()[name]
    with on_backend(backend) as device:
        _compiled_steps(name, build, lambda n: _to(data_cpu(n), device), device)


def _compiled_steps(name, build, data, device):
    torch.manual_seed(0)
    model = build().to(device)
    _loss(model.loss(data(5)))  # data-dependent initialisation (ActNorm) happens eagerly, once
    torch._dynamo.reset()
    counters.clear()
    step = torch.compile(model.loss, fullgraph=True, dynamic=True, backend="aot_eager")
    for n in BATCHES:
        model.zero_grad(set_to_none=True)
        loss = _loss(step(data(n)))
        assert torch.isfinite(loss)
        loss.backward()
        missing = [p for p, t in model.named_parameters() if t.requires_grad and t.grad is None]
        # A GAN's loss trains both players; an unused parameter would show up here.
        assert not missing, f"{name}: no gradient for {missing[:5]}"
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])  # at most one recompile


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")
@pytest.mark.parametrize("name", ["glow", "transformer_block", "ddpm"])
def test_cuda_graphs_through_compile(name):
    """mode="reduce-overhead": inductor's kernels and ours replayed from CUDA graphs."""
    build, data = _models()[name]
    torch.manual_seed(0)
    model = build().cuda()
    _loss(model.loss(_to(data(16), "cuda")))
    torch._dynamo.reset()
    step = torch.compile(model.loss, mode="reduce-overhead")
    batch = _to(data(16), "cuda")
    for _ in range(3):
        loss = _loss(step(batch))
        loss.backward()
        assert torch.isfinite(loss)
