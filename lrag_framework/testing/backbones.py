"""``check_backbone``: the Backbone context contract on a tiny run, as executable checks.

The reference is an independent sliding-window loop (no memory pool, no planner): with K = 0
the engine must produce exactly what a backbone gives when every block attends to the sink and
the most recent frames at their cache slots, as ``interfaces.Backbone`` describes the call order.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..generation.engine import Engine, EngineOptions, stream_generator
from ..generation.plan import Geometry
from ..interfaces import ROLE_LOCAL, ROLE_SINK, Backbone, Context
from ._run import expect


def _context(kv: dict[int, Tensor], spec, start: int, size: int, window: int, sink: int,
             b: int) -> Context:
    """Block [start, start + size) attending to sink frames and the latest local frames, each
    at its cache slot: frame f until the cache rolls, then f - (start + size - window)."""
    n_local = window - sink - size
    ids = [*range(min(sink, start)), *range(max(sink, start - n_local), start)]
    shift = max(0, start + size - window)
    slot = [f if f < sink else f - shift for f in ids]
    if ids:
        stacked = torch.cat([kv[f] for f in ids], dim=3)  # [L, 2, B, F, N, Hh, Dh]
    else:
        stacked = torch.zeros((spec.num_layers, 2, b, 0, spec.tokens_per_frame, spec.num_heads,
                               spec.head_dim), dtype=spec.kv_dtype)
    roles = [ROLE_SINK if f < sink else ROLE_LOCAL for f in ids]
    block = [f if f < sink else f - shift for f in range(start, start + size)]
    rows = lambda v: torch.tensor(v, dtype=torch.long).expand(b, -1).clone()  # noqa: E731
    return Context(kv=stacked, frame_ids=rows(ids), positions=rows(slot), roles=rows(roles),
                   valid=torch.ones(b, len(ids), dtype=torch.bool), block_start=start,
                   block_positions=rows(block))


def _denoise(backbone: Backbone, cond, prepared, generators, size: int) -> Tensor:
    """The sampler loop as the engine runs it: one initial noise and one noise per step per
    stream, ``denoise`` at ``t`` [B], ``sampler_step`` at 0-d ``t``, ``t_next`` (0 at the end)."""
    shape = (size, *backbone.spec.latent_shape)
    x = torch.stack([torch.randn(shape, generator=g) for g in generators])
    ts = backbone.timesteps()
    for i, t in enumerate(ts):
        pred = backbone.denoise(x, t.expand(len(generators)), cond, prepared)
        t_next = ts[i + 1] if i + 1 < len(ts) else torch.zeros_like(t)
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
        x = backbone.sampler_step(x, pred, t, t_next, noise)
    return x


def sliding_window_reference(backbone: Backbone, items: list[Any], num_frames: int, *,
                             seed: int = 0, window: int | None = None, sink: int | None = None,
                             streams: list[int] | None = None
                             ) -> tuple[Tensor, dict[int, Tensor]]:
    """Latents [B, T, C, H, W] of a native (K = 0) run computed without the engine, and the K/V
    of every frame (``{frame: [L, 2, B, 1, N, Hh, Dh]}``). Conditionings must not switch."""
    spec = backbone.spec
    window, sink = window or spec.window, spec.sink if sink is None else sink
    b = len(items)
    generators = [stream_generator(seed, s) for s in (streams or range(b))]
    cond = backbone.encode_conditioning(items, num_frames)
    expect(not cond.switch_frames, "the reference loop takes conditionings without switches")
    out = torch.zeros((b, num_frames, *spec.latent_shape))
    kv: dict[int, Tensor] = {}
    for start in range(0, num_frames, spec.frames_per_block):
        size = min(spec.frames_per_block, num_frames - start)
        prepared = backbone.prepare(_context(kv, spec, start, size, window, sink, b))
        clean = _denoise(backbone, cond, prepared, generators, size)
        new = backbone.recache(clean, cond, prepared)  # [L, 2, B, size, N, Hh, Dh]
        for j in range(size):
            kv[start + j] = new[:, :, :, j:j + 1]
        out[:, start:start + size] = clean.float().cpu()
    return out, kv


def _close(a: Tensor, b: Tensor, rtol: float) -> bool:
    return bool(((a.float() - b.float()).abs() <= rtol * max(1.0, float(a.abs().max()))).all())


def check_backbone(make_backbone: Callable[[], Backbone], items: list[Any] = (None, None), *,
                   num_frames: int | None = None, rtol: float = 1e-5) -> None:
    """On a tiny native run of ``len(items)`` streams (``items``: raw conditionings, without
    switches) over ``num_frames`` (default: past the point where the cache rolls):

    - spec and shapes: ``timesteps`` 1-D descending, ``denoise`` output shaped like ``x``,
      ``recache`` K/V ``[L, 2, B, F, N, Hh, Dh]`` of ``spec`` sizes and ``kv_dtype``, finite;
      ``Conditioning.segments`` ``[B, F]`` or ``[1, F]``; ``frame_signals`` (when not None)
      ``[B, F, S]`` float32 on the CPU, finite, a frame's row independent of the others asked;
    - the engine's latents equal the independent sliding-window loop's (``rtol``);
    - determinism: a second run is bit-identical; batch independence: a stream run alone
      gives its latents in the batch (``rtol``);
    - ``prepared`` is reusable: ``recache`` gives the same K/V before and after a ``denoise``
      pass with it;
    - the context is a set of (K/V, position): padding entries (``valid`` False, any finite
      K/V) and the order of the real frames change nothing (``rtol``).
    """
    items = list(items)
    backbone = make_backbone()
    expect(isinstance(backbone, Backbone), "make_backbone() must return a Backbone")
    spec, b = backbone.spec, len(items)
    ts = backbone.timesteps()
    expect(ts.dim() == 1 and len(ts) >= 1 and bool((ts[1:] < ts[:-1]).all()),
           f"timesteps() must be 1-D and descending, got {ts.tolist()}")
    t_frames = num_frames or spec.window + 2 * spec.frames_per_block
    cond = backbone.encode_conditioning(items, t_frames)
    seg = cond.segments(torch.arange(t_frames))
    expect(tuple(seg.shape) in {(b, t_frames), (1, t_frames)},
           f"segments of {t_frames} frames must be [B, F] or [1, F], got {list(seg.shape)}")
    _check_frame_signals(cond, b, t_frames)

    engine = Engine(backbone, None, None, EngineOptions(
        Geometry(spec.frames_per_block, spec.window, spec.sink)))

    def run(its, streams):
        c = backbone.encode_conditioning(its, t_frames)
        return engine.generate(c, [stream_generator(0, s) for s in streams], t_frames).latents

    latents = run(items, range(b))
    reference, kv = sliding_window_reference(backbone, items, t_frames)
    expect(_close(reference, latents, rtol), "the engine's native run differs from the "
           "sliding-window reference: the backbone depends on more than the Context contract")
    expect(torch.equal(run(items, range(b)), latents), "two identical runs differ")
    alone = run(items[-1:], [b - 1])
    expect(_close(latents[-1:], alone, rtol), "a stream run alone differs from the same stream "
           "in a batch")

    start, size = t_frames, spec.frames_per_block  # one more block, past the last one run
    ctx = _context(kv, spec, start, size, spec.window, spec.sink, b)
    expect(ctx.frame_ids.shape[1] > 0, "num_frames too small to build a context")
    cond = backbone.encode_conditioning(items, start + size)
    prepared = backbone.prepare(ctx)
    clean = latents[:, start - size:start].clone()
    kv1 = backbone.recache(clean, cond, prepared)
    want = (spec.num_layers, 2, b, size, spec.tokens_per_frame, spec.num_heads, spec.head_dim)
    expect(tuple(kv1.shape) == want and kv1.dtype == spec.kv_dtype,
           f"recache must return {list(want)} {spec.kv_dtype}, got {list(kv1.shape)} "
           f"{kv1.dtype}")
    expect(bool(torch.isfinite(kv1.float()).all()), "recache returned non-finite K/V")
    g = torch.Generator().manual_seed(1)
    x = torch.randn((b, size, *spec.latent_shape), generator=g)
    pred = backbone.denoise(x, ts[0].expand(b), cond, prepared)
    expect(tuple(pred.shape) == tuple(x.shape), f"denoise must return {list(x.shape)}, got "
           f"{list(pred.shape)}")
    expect(torch.equal(backbone.recache(clean, cond, prepared), kv1),
           "recache after a denoise pass with the same prepared context differs: passes "
           "must not change what prepare returned")

    f = ctx.frame_ids.shape[1]
    order = torch.randperm(f, generator=g)
    pad = 2
    noise = torch.randn((*ctx.kv.shape[:3], pad, *ctx.kv.shape[4:]), generator=g)
    shuffled = Context(
        kv=torch.cat([ctx.kv[:, :, :, order], noise.to(ctx.kv.dtype)], dim=3),
        frame_ids=torch.cat([ctx.frame_ids[:, order], torch.full((b, pad), -1)], dim=1),
        positions=torch.cat([ctx.positions[:, order], torch.zeros(b, pad, dtype=torch.long)], 1),
        roles=torch.cat([ctx.roles[:, order], torch.full((b, pad), ROLE_LOCAL)], dim=1),
        valid=torch.cat([ctx.valid, torch.zeros(b, pad, dtype=torch.bool)], dim=1),
        block_start=start, block_positions=ctx.block_positions)
    other = backbone.denoise(x, ts[0].expand(b), cond, backbone.prepare(shuffled))
    expect(_close(pred, other, rtol), "denoise depends on the order of the context frames or on "
           "padding entries (valid False)")


def _check_frame_signals(cond, b: int, frames: int) -> None:
    """``frame_signals``, when the conditioning has them: [B, F, S] float32 on the CPU, finite,
    and a frame's row the same whatever else is asked with it."""
    ids = torch.arange(frames)
    signals = cond.frame_signals(ids)
    if signals is None:
        return
    expect(isinstance(signals, Tensor) and signals.dim() == 3 and signals.shape[:2] == (b, frames)
           and signals.dtype == torch.float32 and signals.device.type == "cpu",
           f"frame_signals of {frames} frames must be [{b}, {frames}, S] float32 on the CPU, got "
           f"{list(signals.shape) if isinstance(signals, Tensor) else type(signals).__name__}")
    expect(bool(torch.isfinite(signals).all()), "frame_signals must be finite")
    some = ids.flip(0)[::2]
    expect(torch.equal(cond.frame_signals(some), signals[:, some]),
           "a frame's signal row depends on the other frames asked with it")

