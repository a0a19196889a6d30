"""The block loop: plan context -> denoising steps -> recache, and beside it embed, index,
retrieve next.

The engine owns every random draw (one CPU generator per stream, drawn in a fixed order whether or
not retrieval runs, so native and retrieval runs see identical noise; a block's noise is drawn at
once and copied to the device without a sync, see ``block_noise``), the history memory and the
context plan; a backbone only prepares the planned context, denoises and returns K/V.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..contracts import check_embedder_signals, check_search_result
from ..interfaces import Backbone, Conditioning, Context, Embedder, Retriever
from .memory import KVMemory
from .plan import Geometry, Plan, plan_block
from .timing import Stopwatch


def _event(stream: torch.cuda.Stream | None) -> torch.cuda.Event | None:
    """An event recorded on the current stream (None without a side ``stream``)."""
    if stream is None:
        return None
    event = torch.cuda.Event()
    event.record()
    return event


@contextmanager
def _beside(stream: torch.cuda.Stream | None, ready: torch.cuda.Event | None, *inputs: Tensor):
    """Run the body on the side ``stream`` once ``ready`` has passed on the current one (in line
    without a stream). The current stream runs on meanwhile, so a host sync inside the body (a
    retriever's search results) waits for the body's own work, not for the queued passes;
    ``inputs`` made on the current stream stay allocated until the side stream is done."""
    if stream is None:
        yield
        return
    stream.wait_event(ready)
    for t in inputs:
        t.record_stream(stream)
    with torch.cuda.stream(stream):
        yield


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """The noise generator of one stream, seeded from (seed, stream) without collisions."""
    state = np.random.SeedSequence([seed, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def block_noise(generators: list[torch.Generator], shape: tuple, steps: int,
                pin: bool = False) -> Tensor:
    """The noise of one block, drawn ahead: [1 + steps, B, *shape] float32 on the CPU (pinned
    with ``pin``, for one copy without a sync). Row 0 is the block's initial noise, row 1 + i the
    sampler noise of step i. Each stream's CPU generator is drawn in the order init, step 0, ...,
    step ``steps - 1``, one ``randn(shape)`` each, so the noise of (seed, stream, block, step) is
    bitwise the same whatever the compute device and however the draws are grouped."""
    out = torch.empty((1 + steps, len(generators), *shape), pin_memory=pin)
    for s, gen in enumerate(generators):
        for i in range(1 + steps):
            torch.randn(shape, generator=gen, out=out[i, s])
    return out


@dataclass
class EngineOptions:
    geometry: Geometry  # k = 0: no retrieval (native)
    query: str = "last_frame"
    cross_segments: bool = True  # may retrieval return frames of an earlier prompt segment
    budget_bytes: float = 16 * 2 ** 30
    policy: str = "thin"
    storage: str = "auto"
    tier: str = "auto"


@dataclass
class Generation:
    latents: Tensor  # [B, T, C, H, W] float32 on CPU
    log: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    resumed: dict = field(default_factory=dict)  # what a resume kept and fed back (Pipeline)


class Engine:
    def __init__(self, backbone: Backbone, embedder: Embedder | None,
                 retriever: Retriever | None, options: EngineOptions,
                 device: torch.device | str = "cpu"):
        self.backbone, self.embedder, self.retriever = backbone, embedder, retriever
        self.opt, self.g = options, options.geometry
        self.device = torch.device(device)
        errors = self.g.check()
        if errors:
            raise ValueError("; ".join(errors))
        self.retrieving = self.g.k > 0
        if self.retrieving and (embedder is None or retriever is None):
            raise ValueError("retrieval needs an embedder and a retriever")

    def generate(self, cond: Conditioning, generators: list[torch.Generator], num_frames: int,
                 prefix: Tensor | None = None, initial_noise: Tensor | None = None,
                 on_block: Callable[[int, Tensor], None] | None = None,
                 done: Tensor | None = None) -> Generation:
        """Generate ``num_frames`` latent frames for ``len(generators)`` streams.

        ``prefix`` [B, P, C, H, W]: given clean frames that enter cache and history through the
        recache pass as if generated. ``initial_noise`` [B, T, C, H, W] replaces the drawn initial
        noise of each block (the per-step sampler noise is still drawn). ``on_block(end, clean)``
        is called after each block with its clean latents [B, F, C, H, W].

        ``done`` [B, D, C, H, W] (resume): the first D frames of an interrupted run with the
        same inputs, D one of its block ends. They are fed like a prefix (recache, index,
        retrieval: cache, history and log come out as they were), the block starts stay those
        of ``prefix``, and the noise their generated blocks drew is drawn again and discarded,
        so the remaining blocks get the noise they would have got (bitwise the same latents).
        """
        spec, g = self.backbone.spec, self.g
        b, shape = len(generators), spec.latent_shape
        n_prefix = 0 if prefix is None else prefix.shape[1]
        n_done = 0 if done is None else done.shape[1]
        if n_prefix > num_frames:
            raise ValueError(f"prefix of {n_prefix} frames is longer than num_frames {num_frames}")
        errors = g.position_errors(num_frames, spec.max_positions)
        if errors:
            raise ValueError("; ".join(errors))
        clock = Stopwatch("denoise", "recache", "retrieval", "plan_gather", "memory_setup")
        with clock("memory_setup"):
            memory = KVMemory(spec, b, num_frames, g.window + g.block, self.opt.budget_bytes,
                              self.opt.policy, self.device, self.opt.storage, self.opt.tier,
                              g.sink)
        out = torch.zeros((b, num_frames, *shape), device=self.device)
        ts = self.backbone.timesteps()
        starts = self._block_starts(num_frames, n_prefix)
        ends = starts[1:] + [num_frames]
        if n_done and n_done not in ends:
            raise ValueError(f"{n_done} done frames end no block (block ends {ends})")
        cond = cond.aligned(starts)
        switches = set(cond.switch_frames)
        segments = cond.segments(torch.arange(num_frames)).expand(b, -1)  # [B, T]
        if self.retrieving:
            check_embedder_signals(self.embedder, cond)
            self.retriever.reset()
        log, nothing = [], [[] for _ in range(b)]
        side = torch.cuda.Stream(self.device) if self.retrieving and self.device.type == "cuda" \
            else None  # embedding and retrieval run there, beside the recache pass
        plan = plan_block(g, 0, ends[0], nothing)  # the first block retrieves nothing
        for i, (start, end) in enumerate(zip(starts, ends)):
            if start in switches and start > 0:
                self._recache_window(out, cond, memory, start, end - start)
            with clock("plan_gather"):
                prepared = self.backbone.prepare(self._context(memory, plan, start))
            with clock("denoise"):
                if start < n_done:  # saved by the interrupted run, in its dtype
                    clean = done[:, start:end].to(self.device)
                    if start >= n_prefix:  # the noise this block drew, drawn again
                        block_noise(generators, (end - start, *shape), len(ts))
                elif start < n_prefix:
                    clean = prefix[:, start:end].to(self.device, torch.float32)
                else:
                    init = None if initial_noise is None else initial_noise[:, start:end]
                    clean = self._denoise(cond, prepared, generators, ts, end - start, init)
            with clock("retrieval"):
                after = ends[i + 1] - end if end < num_frames else g.block  # a last block may
                memory.reserve(start, end - start,  # be shorter: it sees older frames
                               droppable_below=g.first_cached(end, after), keep=g.sink)
            with clock("recache"):  # launched first: the retrieval below waits for its results
                denoised = _event(side)
                kv = self.backbone.recache(clean, cond, prepared)
                out[:, start:end] = clean.float()
            with clock("retrieval"):  # the next block's context, beside the recache pass
                if end < num_frames:
                    retrieved = nothing
                    if self.retrieving:
                        with _beside(side, denoised, clean):
                            retrieved, entry = self._retrieve(self._index(clean, cond, start),
                                                              memory, end, segments)
                        log.append(entry)
                    plan = plan_block(g, end, after, retrieved)
                    if self.retrieving:  # the host tier's copy overlaps the recache pass
                        memory.prefetch(plan.frame_ids, end, denoised)
            with clock("recache"):
                memory.store(start, kv)
            if on_block:
                on_block(end, clean)
        mem = {"kv_pool_bytes": memory.bytes, "kv_frame_bytes": memory.frame_bytes,
               "kv_capacity_frames": memory.capacity, "kv_dropped_frames": memory.dropped}
        return Generation(out.cpu(), log, clock.seconds, mem)

    def _block_starts(self, num_frames: int, n_prefix: int) -> list[int]:
        starts, start = [], 0
        while start < num_frames:
            starts.append(start)
            start += min(self.g.block, (n_prefix - start) if start < n_prefix
                         else num_frames - start)
        return starts

    def _retrieve(self, query: Tensor, memory: KVMemory, start: int,
                  segments: Tensor) -> tuple[list[list[int]], dict]:
        """Top-K of the eligible frames for each stream; ``segments`` [B, T]: prompt segment of
        every frame (retrieval stays inside the current one unless ``cross_segments``)."""
        b = segments.shape[0]
        mask = self.g.eligible(start, memory.has_kv()).expand(b, -1)  # [B, T] on the CPU
        if not self.opt.cross_segments:
            mask = mask & (segments[:, :start] == segments[:, start:start + 1])
        entry = {"block_start": start, "query_frame": start - 1,
                 "segment": segments[:, start].tolist(),
                 "eligible": int(mask.sum(1).max()), "ids": [[] for _ in range(b)],
                 "scores": [[] for _ in range(b)]}
        if entry["eligible"] == 0:
            return entry["ids"], entry
        mask_there = mask.to(query.device, non_blocking=True)  # no sync: a host-to-device copy
        result = self.retriever.search(query, self.g.k, mask_there)
        ids, scores, counts = check_search_result(result, self.g.k, mask, self.retriever, start)
        for s in range(b):
            n = int(counts[s])
            entry["ids"][s] = ids[s, :n].tolist()
            entry["scores"][s] = [round(v, 6) for v in scores[s, :n].tolist()]
        return entry["ids"], entry

    @staticmethod
    def _context(memory: KVMemory, plan: Plan, start: int, cond_frame: int | None = None
                 ) -> Context:
        return Context(kv=memory.gather(plan.frame_ids, start), frame_ids=plan.frame_ids,
                       positions=plan.positions, roles=plan.roles, valid=plan.valid,
                       block_start=start, block_positions=plan.block_positions,
                       cond_frame=cond_frame)

    def _denoise(self, cond, prepared, generators, ts, size, init):
        shape = (size, *self.backbone.spec.latent_shape)
        cuda = self.device.type == "cuda"  # one pinned copy per block, no sync on the host
        noise = block_noise(generators, shape, len(ts), cuda).to(self.device, non_blocking=cuda)
        x = noise[0] if init is None else init.to(self.device)
        b = x.shape[0]
        for i, t in enumerate(ts):  # one sampler noise per step, drawn whether used or not
            pred = self.backbone.denoise(x, t.expand(b), cond, prepared)
            t_next = ts[i + 1] if i + 1 < len(ts) else torch.zeros_like(t)
            x = self.backbone.sampler_step(x, pred, t, t_next, noise[1 + i])
        return x

    def _index(self, clean: Tensor, cond: Conditioning, start: int) -> Tensor:
        """Embed and index the new frames; returns the next query [B, D]."""
        b, f = clean.shape[:2]
        ids = torch.arange(start, start + f)
        frames = clean.flatten(0, 1).float()  # [B F, C, H, W]
        if self.embedder.conditioned:
            signals = cond.frame_signals(ids)  # [B, F, S] on the CPU, handed on as they are
            desc = self.embedder.embed(frames, signals.flatten(0, 1))
        else:
            desc = self.embedder.embed(frames)
        desc = desc.view(b, f, -1)
        for s in range(b):
            self.retriever.add(s, ids, desc[s])
        if self.opt.query == "block_mean":
            return desc.mean(dim=1)
        return desc[:, -1]

    def _recache_window(self, out: Tensor, cond: Conditioning, memory: KVMemory, start: int,
                        size: int) -> None:
        """Conditioning switch at ``start``: recompute the K/V of the sink and cached frames."""
        g = self.g
        b = out.shape[0]
        chunks = [(0, min(g.sink, start))] if g.sink else []
        first = g.first_cached(start, size)
        chunks += [(s, min(g.block, start - s)) for s in range(first, start, g.block)]
        for s, n in chunks:
            if n <= 0:
                continue
            plan = plan_block(g, s, n, [[] for _ in range(b)])
            prepared = self.backbone.prepare(self._context(memory, plan, s, cond_frame=start))
            kv = self.backbone.recache(out[:, s:s + n], cond, prepared)
            memory.write(s, kv, droppable_below=0, keep=0)
