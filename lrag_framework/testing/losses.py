"""``check_loss``: the Loss contract as executable checks."""
from __future__ import annotations

from typing import Callable

import torch
from hypothesis import given

from ..interfaces import Loss, LossInputs
from . import strategies
from ._run import expect, run_property


def check_loss(make_loss: Callable[[], Loss], *, min_frames: int = 2,
               needs: tuple[str, ...] = (), latent_shape: tuple[int, int, int] = (2, 3, 3),
               max_examples: int | None = None) -> None:
    """A finite 0-d floating tensor for sequences of at least ``min_frames`` frames (also for
    bf16 embeddings, as under autocast), deterministic, differentiable (finite gradients
    reach the embeddings and, when used, the reconstruction), inputs unchanged; calling it
    without a tensor named in ``needs`` (``latents``, ``reconstruction``) is a ValueError."""
    loss = make_loss()
    expect(isinstance(loss, Loss), "make_loss() must return a Loss")

    @given(e=strategies.embedding_sequences(min_frames=min_frames), seed=strategies.seeds())
    def prop(e, seed):
        b, s = e.shape[:2]
        g = torch.Generator().manual_seed(int(seed.integers(2 ** 31)))
        latents = torch.randn(b, s, *latent_shape, generator=g)
        recon = (latents + 0.1 * torch.randn(b, s, *latent_shape, generator=g))
        emb, rec = e.clone().requires_grad_(True), recon.clone().requires_grad_(True)
        value = loss(LossInputs(embeddings=emb, latents=latents, reconstruction=rec))
        expect(isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point(),
               f"a loss must be a 0-d floating tensor, got {value!r}")
        expect(bool(torch.isfinite(value)), f"loss is {float(value.detach())}")
        expect(torch.equal(emb.detach(), e) and torch.equal(rec.detach(), recon),
               "a loss must not change its inputs")
        again = loss(LossInputs(embeddings=e.clone(), latents=latents, reconstruction=recon))
        expect(torch.equal(again.detach(), value.detach()), "a loss must be deterministic")
        expect(value.requires_grad, "the loss does not depend differentiably on its inputs")
        value.backward()
        for name, t in (("embeddings", emb), ("reconstruction", rec)):
            expect(t.grad is None or bool(torch.isfinite(t.grad).all()),
                   f"non-finite gradient in {name}")
        half = loss(LossInputs(embeddings=e.bfloat16(), latents=latents.bfloat16(),
                               reconstruction=recon.bfloat16()))
        expect(half.is_floating_point() and bool(torch.isfinite(half)),
               "the loss of bf16 inputs must be finite")

    run_property(prop, max_examples)
    e = torch.randn(2, max(min_frames, 3), 4)
    for missing in needs:
        given_ = {"latents": torch.randn(2, e.shape[1], *latent_shape)}
        given_["reconstruction"] = given_["latents"].clone()
        given_.pop(missing)
        try:
            loss(LossInputs(embeddings=e, **given_))
        except ValueError:
            continue
        raise AssertionError(f"a loss that needs {missing} must raise ValueError without it")
