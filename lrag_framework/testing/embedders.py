"""``check_embedder``: the Embedder (and TrainableEmbedder) contract as executable checks."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import torch
from hypothesis import given

from ..interfaces import Embedder, TrainableEmbedder
from . import strategies
from ._run import expect, run_property


def check_embedder(make_embedder: Callable[[], Embedder], latent_shape: tuple[int, int, int], *,
                   load: Callable[[str], Embedder] | None = None, rtol: float = 1e-5,
                   max_examples: int | None = None) -> None:
    """Shape ``[N, C, H, W] -> [N, D]`` with one D, floating, finite, non-zero rows;
    deterministic; batch independent (a frame alone, or in another order, gets the same
    descriptor to ``rtol``); the input is left unchanged. A ``TrainableEmbedder`` is also
    trained one step's worth (``model`` returns (reconstruction, embedding), gradients reach
    its parameters), saved, and, with ``load(folder)`` (build the component with its weights
    param set to the folder), loaded back to embed exactly as before."""
    embedder = make_embedder()
    expect(isinstance(embedder, Embedder), "make_embedder() must return an Embedder")
    expect(isinstance(embedder.to("cpu"), Embedder), "to(device) must return the embedder")
    dims = set()

    @given(x=strategies.latent_frames(latent_shape))
    def prop(x):
        before = x.clone()
        out = embedder.embed(x)
        expect(torch.equal(x, before), "embed must not change its input")
        expect(isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == len(x),
               f"embed of {list(x.shape)} must give [N, D], got "
               f"{list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        expect(out.is_floating_point(), f"descriptors must be floating, got {out.dtype}")
        dims.add(out.shape[1])
        expect(len(dims) == 1, f"descriptor dimension changed between calls: {sorted(dims)}")
        expect(bool(torch.isfinite(out).all()), "descriptors of finite frames must be finite")
        expect(bool((out != 0).any(dim=1).all()), "a random frame got a zero descriptor")
        expect(torch.equal(embedder.embed(x), out), "embed must be deterministic")
        tol = rtol * max(1.0, float(out.abs().max()))
        alone = torch.cat([embedder.embed(x[i:i + 1]) for i in range(len(x))])
        expect(bool(((alone - out).abs() <= tol).all()),
               "a frame's descriptor depends on the other frames of its batch")
        flipped = embedder.embed(x.flip(0)).flip(0)
        expect(bool(((flipped - out).abs() <= tol).all()),
               "a frame's descriptor depends on its place in the batch")

    run_property(prop, max_examples)
    if isinstance(embedder, TrainableEmbedder):
        _check_trainable(make_embedder, latent_shape, load)


def _check_trainable(make_embedder, latent_shape, load) -> None:
    embedder = make_embedder()
    model = embedder.model
    expect(isinstance(model, torch.nn.Module), "TrainableEmbedder.model must be an nn.Module")
    x = torch.randn(3, *latent_shape, generator=torch.Generator().manual_seed(0))
    model.train()
    try:
        recon, z = model(x)
    finally:
        model.eval()
    expect(recon is None or tuple(recon.shape) == tuple(x.shape),
           f"model(x) must return (reconstruction {list(x.shape)} or None, embedding)")
    expect(z.dim() == 2 and z.shape[0] == len(x), f"model's embedding must be [N, D], got "
           f"{list(z.shape)}")
    loss = z.float().pow(2).sum() + (0 if recon is None else recon.float().pow(2).sum())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    expect(any(g is not None and bool(g.abs().sum() > 0) for g in grads),
           "no gradient reaches the model's parameters")
    expect(all(g is None or bool(torch.isfinite(g).all()) for g in grads),
           "non-finite gradients")
    model.zero_grad(set_to_none=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "weights"
        embedder.save(folder)
        expect((folder / "model.safetensors").is_file(),
               "save(folder) must write folder/model.safetensors (the trainer resumes from it)")
        from safetensors.torch import load_file

        saved = load_file(str(folder / "model.safetensors"))
        expect(set(saved) == set(model.state_dict()),
               "model.safetensors must hold exactly model.state_dict()")
        if load is not None:
            again = load(str(folder))
            expect(torch.equal(again.embed(x), embedder.embed(x)),
                   "the embedder loaded from the saved folder embeds differently")
