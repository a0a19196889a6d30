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
                   max_examples: int | None = None, signal_dim: int | None = None) -> None:
    """Shape ``[N, C, H, W] -> [N, D]`` with one D, floating, finite, non-zero rows;
    deterministic; batch independent (a frame alone, or in another order, gets the same
    descriptor to ``rtol``); the input is left unchanged. A conditioned embedder is called as
    ``embed(frames, signals)`` with signal rows ``[N, signal_dim]`` (required then) and checked
    the same way, a frame travelling with its row. A ``TrainableEmbedder`` is also
    trained one step's worth (``model`` returns (reconstruction, embedding), gradients reach
    its parameters), saved, and, with ``load(folder)`` (build the component with its weights
    param set to the folder), loaded back to embed exactly as before."""
    embedder = make_embedder()
    expect(isinstance(embedder, Embedder), "make_embedder() must return an Embedder")
    expect(isinstance(embedder.to("cpu"), Embedder), "to(device) must return the embedder")
    conditioned = bool(embedder.conditioned)
    expect(not conditioned or (signal_dim or 0) >= 1,
           "a conditioned embedder is checked with signal_dim= (the width S of its signal rows)")
    inputs = (strategies.signalled_frames(latent_shape, signal_dim) if conditioned
              else strategies.latent_frames(latent_shape).map(lambda x: (x,)))
    dims = set()

    def embed(args, rows=slice(None)):
        return embedder.embed(*(a[rows] for a in args))

    @given(args=inputs)
    def prop(args):
        x = args[0]
        before = [a.clone() for a in args]
        out = embed(args)
        expect(all(torch.equal(a, b) for a, b in zip(args, before)),
               "embed must not change its input")
        expect(isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == len(x),
               f"embed of {list(x.shape)} must give [N, D], got "
               f"{list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        expect(out.is_floating_point(), f"descriptors must be floating, got {out.dtype}")
        dims.add(out.shape[1])
        expect(len(dims) == 1, f"descriptor dimension changed between calls: {sorted(dims)}")
        expect(bool(torch.isfinite(out).all()), "descriptors of finite frames must be finite")
        expect(bool((out != 0).any(dim=1).all()), "a random frame got a zero descriptor")
        expect(torch.equal(embed(args), out), "embed must be deterministic")
        tol = rtol * max(1.0, float(out.abs().max()))
        alone = torch.cat([embed(args, slice(i, i + 1)) for i in range(len(x))])
        expect(bool(((alone - out).abs() <= tol).all()),
               "a frame's descriptor depends on the other frames of its batch")
        flipped = embed(args, torch.arange(len(x) - 1, -1, -1)).flip(0)
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
