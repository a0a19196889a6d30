"""The Pipeline: every command that generates a whole config goes through it.

``setup`` builds the components from the registry, derives and checks the geometry once, reads
and checks the start frames and warms the backbone up; ``generate(mode)`` is the one batch loop
over the config's streams (``native``: K = 0; ``retrieval``: the configured K); ``close``
releases the components. It writes no files and prints nothing: ``lrag run`` hands its blocks
to ``outputs.run_dir``, ``lrag collect-latents`` to the corpus writer, benchmarks time it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from ..config import ConfigError, RunConfig
from ..contracts import check_embedder_signals
from ..devices import resolve_device, resolve_dtype
from ..interfaces import ComponentError
from .budget import capacities, estimate, resolve_memory
from .engine import Engine, EngineOptions, Generation, stream_generator
from .memory import MemoryBudgetError, check_budget
from .plan import Geometry
from .prefix import check_prefix, load_prefix

MODES = ("native", "retrieval")
MAX_VIDEO_SIDE = 8192  # pixels per side of an h264 frame written here (level 6.2: 8192x4320)


def _built(what: str, name: str, make: Callable):
    """``make()``; an error while building a component or reading its input (a missing or
    corrupt file, a value the plugin refuses) becomes one ComponentError naming it."""
    try:
        return make()
    except (ComponentError, ConfigError, MemoryBudgetError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - a plugin's own error: reported, not a traceback
        raise ComponentError(f"{what} ({name}): {type(err).__name__}: {err}") from err


@dataclass(frozen=True)
class Stream:
    """One video of a run: conditioning ``conditioning``, sample ``sample``, noise generator
    ``stream_generator(seed, index)``, or ``stream_generator(seed, noise_key)`` when a key is
    given (a suite keys each item's noise by its name and sample: ``suites.py``)."""

    index: int
    conditioning: int
    sample: int
    seed: int
    noise_key: int | None = None

    @property
    def generator(self):
        return stream_generator(self.seed, self.index if self.noise_key is None
                                else self.noise_key)

    def as_dict(self) -> dict:
        return {"stream": self.index, "conditioning": self.conditioning, "sample": self.sample,
                "seed": self.seed}


def streams_of(cfg: RunConfig) -> list[Stream]:
    """Conditioning-major, then sample: stream ``i * samples + j``."""
    n = cfg.samples_per_conditioning
    return [Stream(i * n + j, i, j, cfg.generation.seed)
            for i in range(len(cfg.conditionings)) for j in range(n)]


def modes_of(cfg: RunConfig) -> list[str]:
    modes = (["native"] if cfg.compare else []) + (["retrieval"] if cfg.retrieval.enabled else [])
    return modes or ["native"]


class Pipeline:
    """A validated config, set up once, generating any of its modes."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.num_frames = cfg.generation.num_frames
        self.streams = streams_of(cfg)
        self.modes = modes_of(cfg)
        self.backbone = self.embedder = self.retriever = None
        self.prefix: Tensor | None = None
        self.initial_noise: Tensor | None = None
        self.references: list = []
        self.memory_resolved: dict | None = None
        self._configured_start = cfg.prefix

    # ------------------------------------------------------------------------ setup

    def setup(self, prefix: Tensor | None = None, initial_noise: Tensor | None = None,
              warm_up: bool = True, inputs: bool = True) -> Pipeline:
        """``check``, then the warm-up; raises ConfigError, ComponentError or
        MemoryBudgetError before anything is generated. ``inputs=False``: the conditionings
        come later, batch by batch, through ``set_inputs`` (a suite)."""
        self.check(prefix, initial_noise, inputs)
        self.warm_up_seconds = self.warm_up() if warm_up else 0.0
        return self

    def check(self, prefix: Tensor | None = None, initial_noise: Tensor | None = None,
              inputs: bool = True) -> Pipeline:
        """Every check a run makes before generating (``lrag validate`` runs this): device and
        dtype, components built (weights read), geometry, memory need against the machine and
        the budget, video size, every conditioning, reference frames and start frames
        (``inputs``)."""
        from ..plugins import load_plugins

        cfg = self.cfg
        registry = load_plugins(disabled=tuple(cfg.disable_plugins))
        try:
            self.device = resolve_device(cfg.device)
        except ValueError as err:
            raise ConfigError([str(err)]) from None
        if self.device.type == "cpu" and cfg.dtype not in ("auto", "float32"):
            raise ConfigError([f"dtype: {cfg.dtype} on the CPU is not supported (the CPU "
                               f"computes in float32): set dtype auto or float32"])
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.backbone = _built("backbone", cfg.backbone.name, lambda: registry.build(
            "backbone", cfg.backbone.name, cfg.backbone.params).to(self.device, self.dtype))
        self.geometry = g = self._geometry()
        batch = min(cfg.generation.batch_size, len(self.streams))
        self.cfg, self.memory_resolved = resolve_memory(  # budget_gb auto: up front
            cfg, self.backbone, batch, g.window + g.block, g.sink, self.device)
        cfg = self.cfg
        self._check_memory(batch)
        self._check_video()
        if "retrieval" in self.modes and self.geometry.k > 0:
            self.embedder = _built("embedder", cfg.embedder.name, lambda: registry.build(
                "embedder", cfg.embedder.name, cfg.embedder.params).to(self.device))
            self.retriever = _built("retriever", cfg.retriever.name, lambda: registry.build(
                "retriever", cfg.retriever.name, cfg.retriever.params))
        if inputs:
            self.set_inputs(cfg.conditionings, prefix)
        shape = (len(self.streams), self.num_frames, *self.backbone.spec.latent_shape)
        if initial_noise is not None and tuple(initial_noise.shape) != shape:
            raise ConfigError([f"initial_noise: expected {list(shape)}, got "
                               f"{list(initial_noise.shape)}"])
        self.initial_noise = initial_noise
        return self

    def set_inputs(self, conditionings: list, prefix: Tensor | None = None,
                   start=None) -> None:
        """The conditionings to generate, each checked (their streams, references and start
        frames: the configured ``prefix``, ``start`` (a ``PrefixConfig``) instead, or the given
        latents [S, P, C, H, W]). A suite sets each batch's items this way on one set-up
        pipeline."""
        cfg = self.cfg.model_copy(update={
            "conditionings": list(conditionings),
            "prefix": self._configured_start if start is None else start})
        self.cfg, self.streams = cfg, streams_of(cfg)
        by_item = []
        for i, item in enumerate(cfg.conditionings):
            what = f"conditionings[{i}]"
            cond = _built(what, cfg.backbone.name, lambda: self.backbone.encode_conditioning(
                [item], self.num_frames))
            if self.embedder is not None:  # a conditioned key needs the conditioning's signals
                check_embedder_signals(self.embedder, cond)
            by_item.append(_built(what, cfg.backbone.name,
                                  lambda: self.backbone.reference(item, self.num_frames)))
        self.references = [by_item[s.conditioning] for s in self.streams]
        self.prefix = load_prefix(cfg, self.backbone, self.references) if prefix is None \
            else prefix
        if self.prefix is not None:
            check_prefix(self.prefix, len(self.streams), self.num_frames,
                         tuple(self.backbone.spec.latent_shape))
            self._check_prefix_use()

    def _check_memory(self, batch: int) -> None:
        """Refuse a run whose memory need (latents, K/V pool, the backbone's estimate) exceeds
        the machine's, and a budget the run's own policy refuses: before any allocation."""
        cfg, g, spec = self.cfg, self.geometry, self.backbone.spec
        m = cfg.memory
        capacity = check_budget(spec, batch, self.num_frames, g.window + g.block,
                                m.budget_gb * 2 ** 30, m.policy, m.storage)
        need = estimate(self.backbone, batch, self.num_frames, m.storage, m.tier,
                        kv_frames=capacity, ring_frames=g.sink + g.window + g.block,
                        device=self.device)
        everything = math.prod(spec.latent_shape) * 4 * self.num_frames * len(self.streams)
        device_total, host_total = capacities(self.device)
        gib = 2 ** 30
        problems = []
        if self.device.type == "cpu":
            need_host = need.device_bytes + everything
            if need_host > host_total:
                problems.append(f"{need_host / gib:.1f} GiB of memory, the machine has "
                                f"{host_total / gib:.1f} GiB")
        else:
            if need.device_bytes > device_total:
                problems.append(f"{need.device_bytes / gib:.1f} GiB on {self.device}, which has "
                                f"{device_total / gib:.1f} GiB")
            if need.host_bytes + everything > host_total:
                problems.append(f"{(need.host_bytes + everything) / gib:.1f} GiB of host memory, "
                                f"the machine has {host_total / gib:.1f} GiB")
        if problems:
            parts = ", ".join(f"{k} {v / gib:.2f} GiB" for k, v in need.parts.items())
            raise MemoryBudgetError(
                f"the run needs {' and '.join(problems)} ({self.num_frames} frames x "
                f"{len(self.streams)} streams, batches of {batch}: {parts}, all output latents "
                f"{everything / gib:.2f} GiB): generate fewer frames or streams")

    def _check_video(self) -> None:
        """The video's size, and its decoder built (its weights read: a missing decoder file
        is reported here, with the way to run without video, not at the first block)."""
        out, spec = self.cfg.output, self.backbone.spec
        if not out.video:
            return
        h, w = spec.pixel_size or tuple(spec.latent_shape[1:])
        if max(h, w) * out.video_scale > MAX_VIDEO_SIDE:
            raise ConfigError([f"output.video_scale: {out.video_scale} x frames of {h}x{w} "
                               f"pixels gives {h * out.video_scale}x{w * out.video_scale}, over "
                               f"h264's {MAX_VIDEO_SIDE} pixels per side"])
        try:
            _built("video decoder", self.cfg.backbone.name, self.backbone.stream_decoder)
        except ComponentError as err:
            raise ComponentError(f"output.video: {err}; or run without video: "
                                 f"--set output.video=false") from None

    def _check_prefix_use(self) -> None:
        """A start that holds fewer frames than asked for, or nothing but zeros, is refused."""
        p, n = self.cfg.prefix, self.prefix.shape[1]
        if p is not None and p.frames is not None and p.frames > self.num_frames:
            raise ConfigError([f"prefix.frames: {p.frames} start frames do not fit "
                               f"generation.num_frames {self.num_frames}"])
        if p is not None and p.frames is not None and n < p.frames:
            raise ConfigError([f"prefix.frames: {p.frames} asked for, the {p.source} start "
                               f"holds {n}"])
        if not bool(self.prefix.any()):
            raise ConfigError(["prefix: every value is 0 (an empty or broken start)"])

    def _geometry(self) -> Geometry:
        gen, ret, spec = self.cfg.generation, self.cfg.retrieval, self.backbone.spec
        g = Geometry(block=gen.frames_per_block or spec.frames_per_block,
                     window=gen.window or spec.window,
                     sink=spec.sink if gen.sink is None else gen.sink,
                     k=ret.k if ret.enabled else 0, recency=ret.recency,
                     placement=ret.placement, retrieved_position=ret.retrieved_position,
                     positions=gen.positions)
        errors = g.check() + g.position_errors(self.num_frames, spec.max_positions)
        first = g.cache + g.recency + g.sink + 1  # the first block start with a candidate
        if g.k > 0 and not errors and self.num_frames <= first:
            errors.append(f"retrieval: nothing can ever be retrieved in {self.num_frames} frames "
                          f"(frames leave the window of {g.window} only from frame {g.cache}, "
                          f"and the recency guard holds back the {g.recency} newest of them): "
                          f"generate more than {first} frames, lower generation.window or "
                          f"retrieval.recency, or set retrieval.enabled false")
        if errors:
            raise ConfigError(errors)
        return g

    def geometry_of(self, mode: str) -> Geometry:
        """The retrieval geometry, or the same with K = 0 natively."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return self.geometry if mode == "retrieval" else dataclasses.replace(self.geometry, k=0)

    @property
    def first_generated(self) -> int:
        return 0 if self.prefix is None else self.prefix.shape[1]

    def _options(self, g: Geometry, tier: str | None = None) -> EngineOptions:
        m, r = self.cfg.memory, self.cfg.retrieval
        return EngineOptions(g, query=r.query, cross_segments=r.cross_segments,
                             budget_bytes=m.budget_gb * 2 ** 30, policy=m.policy,
                             storage=m.storage, tier=m.tier if tier is None else tier)

    def warm_up(self) -> float:
        """Discarded blocks until the window is full (every context size the run will see, with
        the run's memory storage), so one-time costs (kernels, allocator, compilation) stay out
        of the timings. Always on a device pool: a host pool is page-locked once, for the run.
        When the run decodes video, its first two blocks are decoded too (a stream's first
        block and a later one, at the batch size: a compiled or autotuned decoder is ready)."""
        t = time.perf_counter()
        g = self.geometry
        engine = Engine(self.backbone, None, None,
                        self._options(self.geometry_of("native"), tier="auto"),
                        self.device)
        cond = self.backbone.encode_conditioning(self.cfg.conditionings[:1], self.num_frames)
        out = engine.generate(cond, [stream_generator(0, 0)],
                              min(self.num_frames, g.window + g.block))
        if self.cfg.output.video or any(r is not None for r in self.references):
            import torch

            decode = self.backbone.stream_decoder()
            batch = min(self.cfg.generation.batch_size, len(self.streams))
            latents = out.latents.expand(batch, *out.latents.shape[1:])  # [B, T, C, H, W]
            with torch.no_grad():
                for start in range(0, min(2 * g.block, latents.shape[1]), g.block):
                    decode(latents[:, start:start + g.block].to(self.device))
        return time.perf_counter() - t

    # ------------------------------------------------------------------------ the batch loop

    def generate(self, mode: str, streams: list[Stream] | None = None,
                 video=None, on_frames: Callable[[int], None] | None = None,
                 state=None) -> Generation:
        """Generate ``streams`` (default: all) in batches of ``generation.batch_size``.

        ``video`` (``outputs.streaming.VideoStreams``) decodes and writes each finished block;
        its time is reported apart from generation's. ``on_frames(n)``: n more frames are done
        (progress). ``state`` (``outputs.resume.ModeState``): each block is saved as it
        completes and each batch when it is finished; a finished batch is read back instead of
        generated, an unfinished one resumes after its saved blocks (``Engine.generate(done=)``)."""
        import torch

        engine = Engine(self.backbone, self.embedder, self.retriever,
                        self._options(self.geometry_of(mode)), self.device)
        streams = self.streams if streams is None else streams
        size = self.cfg.generation.batch_size
        parts, logs, seconds, memory = [], [], {}, {}
        resumed = {"batches_kept": 0, "blocks_fed_back": 0, "frames_fed_back": 0,
                        "feed_back_seconds": 0.0}
        start = time.perf_counter()
        for first in range(0, len(streams), size):
            batch = streams[first:first + size]
            ids = [s.index for s in batch]
            saved = state.blocks(ids) if state is not None else []
            kept_log = state.batch_done(ids) if state is not None else None
            if kept_log is not None:  # finished by the interrupted run
                parts.append(self._kept_batch(ids, saved, video, on_frames))
                logs += kept_log
                resumed["batches_kept"] += 1
                continue
            done = torch.cat(saved, dim=1) if saved else None
            n_done = 0 if done is None else done.shape[1]
            cond = self.backbone.encode_conditioning(
                [self.cfg.conditionings[s.conditioning] for s in batch], self.num_frames)
            progress = {"end": 0, "t": time.perf_counter()}

            def on_block(end, clean, progress=progress, n=len(batch), n_done=n_done, ids=ids):
                if on_frames:
                    on_frames((end - progress["end"]) * n)
                if state is not None and end > n_done:
                    state.save_block(ids, progress["end"], clean)
                if end <= n_done:
                    resumed["blocks_fed_back"] += 1
                    resumed["frames_fed_back"] += (end - progress["end"]) * n
                    resumed["feed_back_seconds"] = round(
                        resumed["feed_back_seconds"] + time.perf_counter() - progress["t"],
                        4)
                progress["end"], progress["t"] = end, time.perf_counter()
                if video is not None:
                    video.append(clean)

            try:
                with video.batch(ids) if video is not None else contextlib.nullcontext():
                    out = engine.generate(
                        cond, [s.generator for s in batch], self.num_frames,
                        prefix=None if self.prefix is None else self.prefix[ids],
                        initial_noise=None if self.initial_noise is None
                        else self.initial_noise[ids], on_block=on_block, done=done)
            finally:  # a stopped run keeps every block it finished
                if state is not None:
                    state.flush()
            parts.append(out.latents)
            for entry in out.log:
                entry["streams"] = ids
            logs += out.log
            if state is not None:
                state.finish_batch(ids, out.log)
            seconds = {k: seconds.get(k, 0.0) + v for k, v in out.timings.items()}
            memory = out.memory
        seconds["total"] = time.perf_counter() - start - seconds.get("memory_setup", 0.0)
        if video is not None:
            seconds["total"] -= video.seconds
            seconds["decode_write"] = video.seconds
            seconds["first_frame"] = video.first_frame_seconds
        return Generation(torch.cat(parts), logs, seconds, memory, resumed)

    def _kept_batch(self, ids: list[int], blocks: list, video, on_frames) -> Tensor:
        """The latents [B, T, C, H, W] of a batch an interrupted run finished; its pixels are
        decoded again when the run keeps pixels (its videos are already complete)."""
        import torch

        latents = torch.cat(blocks, dim=1)
        if latents.shape[1] != self.num_frames:
            raise ConfigError([f"resume: batch {ids} is marked finished but holds "
                               f"{latents.shape[1]} of {self.num_frames} frames"])
        if video is not None and video.keep_pixels:
            with video.batch(ids, write=False):
                for block in blocks:
                    video.append(block)
        if on_frames:
            on_frames(latents.shape[0] * latents.shape[1])
        return latents.float()

    # ------------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Release the components (and with them their device memory)."""
        self.backbone = self.embedder = self.retriever = None
        self.prefix = self.initial_noise = None

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
