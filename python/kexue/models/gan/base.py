"""What every GAN here shares: data scaling, latent sampling, and one ``loss()`` that updates both
players.

One loss, two players
---------------------
``kexue.train`` calls ``model.loss(batch)`` once per step, backpropagates it, and takes one step of
a single optimizer over all parameters. A GAN needs the critic to descend the critic loss and
the generator to descend the generator loss. ``loss()`` therefore returns
``loss_critic + loss_generator`` where each term reaches only its own player's parameters:

- the critic loss sees the fake samples as ``G(z).detach()``: no gradient reaches G;
- the generator loss evaluates the critic through ``torch.func.functional_call`` with the
  critic's parameters detached: the gradient flows through the critic's *input* into G, and
  nothing reaches the critic's parameters.

So ``∂loss/∂θ_critic = ∂loss_critic/∂θ_critic`` and ``∂loss/∂θ_G = ∂loss_generator/∂θ_G``
exactly (tests/test_gan.py checks both). Both gradients are taken at the same point, so one
optimizer step is a *simultaneous* gradient step of the two players (one critic step per
generator step), not the alternating one of the papers; with Adam this trains the models here.
The losses are ordinary tensors, so gradient clipping, DDP and checkpoints work unchanged.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call

from kexue import _random
from kexue.metrics import mmd2
from kexue.models.gan.nets import check_event_shape, default_sizes

Tensor = torch.Tensor


def frozen(module: nn.Module) -> Callable[..., Tensor]:
    """``module`` as a function of its inputs only: its parameters enter detached, so gradients
    flow through the inputs and never into the parameters. Buffers (spectral-norm vectors) are the
    module's own."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return lambda *args: functional_call(module, params, args)


class AdversarialModel(nn.Module):
    """Base of the GANs: ``generator`` maps ``z ~ N(0, I_latent_dim)`` to model space.

    Model space: vectors as they are; images in [-1, 1] — ``x/(L−1)·2 − 1`` for discrete data
    with ``n_levels = L`` (the digits' 0..16), ``2x − 1`` for float images in [0, 1].
    ``sample`` returns data space (discrete images rounded to their levels, like the flows).

    ``adam_betas``: the Adam betas these models are meant to train with. Games need little
    momentum (β₁ = 0.5 as in DCGAN; with β₁ = 0.9 the simultaneous updates orbit and collapse);
    training loops that build their own optimizer should read this attribute.

    Subclasses define ``critic_loss(real, fake)``, ``generator_loss(real, fake, critic)`` and
    ``critic_metrics(real, fake)``; ``loss`` combines them as the module docstring explains.
    """

    adam_betas = (0.5, 0.999)

    def __init__(self, event_shape: Sequence[int], n_levels: Optional[int], latent_dim: Optional[int],
                 hidden: Optional[int]):
        """``latent_dim`` and ``hidden`` (network width) default to ``nets.default_sizes``."""
        super().__init__()
        who = type(self).__name__
        self.event_shape = check_event_shape(event_shape, who)
        if n_levels is not None and (isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2):
            raise ValueError(f"{who}: n_levels must be an integer >= 2 or None, got {n_levels!r}")
        default_latent, default_hidden = default_sizes(self.event_shape)
        latent_dim = default_latent if latent_dim is None else latent_dim
        hidden = default_hidden if hidden is None else hidden
        for name, v in (("latent_dim", latent_dim), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{who}: {name} must be a positive integer, got {v!r}")
        self.n_levels, self.latent_dim, self.hidden = n_levels, latent_dim, hidden
        self.is_image = len(self.event_shape) == 3

    # ---- data <-> model space ---------------------------------------------------------------
    def check_batch(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__}: expected a tensor batch, got {type(x).__name__}")
        if x.dim() != len(self.event_shape) + 1 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"{type(self).__name__}: expected a batch [B, {', '.join(map(str, self.event_shape))}], "
                             f"got {list(x.shape)}")
        if x.shape[0] < 1:
            raise ValueError(f"{type(self).__name__}: the batch is empty")

    def check_training_batch(self, x: Tensor) -> None:
        """``check_batch``, plus: a training-mode step needs two examples (the generator's batch
        norm has no statistics for one)."""
        self.check_batch(x)
        if self.training and x.shape[0] < 2:
            raise ValueError(f"{type(self).__name__}: training needs a batch of at least 2 examples, got 1")

    def to_model_space(self, x: Tensor) -> Tensor:
        dtype = next(self.parameters()).dtype
        x = x.to(dtype)
        if self.n_levels is not None:
            return x * (2.0 / (self.n_levels - 1)) - 1
        return 2 * x - 1 if self.is_image else x

    def to_data_space(self, y: Tensor) -> Tensor:
        if self.n_levels is not None:
            return ((y + 1) * ((self.n_levels - 1) / 2)).round().clamp(0, self.n_levels - 1)
        return ((y + 1) / 2).clamp(0, 1) if self.is_image else y

    # ---- sampling -----------------------------------------------------------------------------
    def draw_latent(self, n: int, generator: Optional[torch.Generator] = None, temperature: float = 1.0) -> Tensor:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{type(self).__name__}: n must be a non-negative integer, got {n!r}")
        if not temperature >= 0:
            raise ValueError(f"{type(self).__name__}: temperature must be >= 0, got {temperature!r}")
        p = next(self.parameters())
        return temperature * _random.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype)

    @contextlib.contextmanager
    def generator_in_eval_mode(self):
        """Run the generator with its batch norm on the running statistics, which it leaves
        unchanged (sampling must not move them, and works for a single sample)."""
        was_training = self.generator.training
        self.generator.eval()
        try:
            yield self.generator
        finally:
            self.generator.train(was_training)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:
        """``n`` samples in data space; ``temperature`` scales the latent noise."""
        with self.generator_in_eval_mode() as g:
            return self.to_data_space(g(self.draw_latent(n, generator, temperature)))

    # ---- the two players ----------------------------------------------------------------------
    def critic_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        """The critic's loss on model-space ``real`` and (detached) ``fake`` batches."""
        raise NotImplementedError(f"{type(self).__name__} does not define critic_loss")

    def generator_loss(self, real: Tensor, fake: Tensor, critic: Optional[Callable[..., Tensor]] = None) -> Tensor:
        """The generator's loss, evaluating ``critic`` (default ``self.critic``) on ``fake``."""
        raise NotImplementedError(f"{type(self).__name__} does not define generator_loss")

    def critic_metrics(self, real: Tensor, fake: Tensor) -> Dict[str, Tensor]:
        return {}

    def loss(self, batch: Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """``loss_critic + loss_generator`` with the gradients kept apart (module docstring);
        ``generator`` seeds the latent draw (default: the global RNG)."""
        self.check_training_batch(batch)
        real = self.to_model_space(batch)
        fake = self.generator(self.draw_latent(real.shape[0], generator))
        loss_d = self.critic_loss(real, fake.detach())
        loss_g = self.generator_loss(real, fake, frozen(self.critic))
        return {"loss": loss_d + loss_g, "loss_d": loss_d.detach(), "loss_g": loss_g.detach()}

    @torch.no_grad()
    def evaluate(self, batch: Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """The critic's view (``critic_metrics``) and ``mmd``: the squared kernel MMD between the
        batch and as many samples, in model space."""
        self.check_batch(batch)
        real = self.to_model_space(batch)
        fake = self.generator(self.draw_latent(real.shape[0], generator))
        return {**self.critic_metrics(real, fake), "mmd": mmd2(real, fake)}


__all__ = ["AdversarialModel", "frozen"]
