"""``run(config)``: build typed components from the registry, generate in batches of streams,
write the run directory (config, latents, videos, retrieval log, summary)."""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
import yaml
from torch import Tensor

from .config import ConfigError, RunConfig, apply_overrides, read_config, validate
from .generation.engine import Engine, EngineOptions, Generation, stream_generator
from .interfaces import ComponentError
from .outputs.media import side_by_side_files
from .generation.budget import resolve_memory
from .generation.memory import MemoryBudgetError
from .files import write_json, write_jsonl, write_tensors
from .generation.plan import Geometry
from .outputs.streaming import VideoStreams

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class RunResult:
    run_dir: Path
    latents: dict[str, Tensor]  # mode ("retrieval" / "native") -> [S, T, C, H, W]
    summary: dict
    paths: dict[str, Path] = field(default_factory=dict)


@dataclass
class Components:
    backbone: object
    embedder: object
    retriever: object
    device: torch.device


def resolve_device(cfg: RunConfig) -> tuple[torch.device, torch.dtype]:
    cuda = torch.cuda.is_available()
    device = torch.device(("cuda" if cuda else "cpu") if cfg.device == "auto" else cfg.device)
    if device.type == "cuda" and not cuda:
        raise ConfigError([f"device {cfg.device}: CUDA is not available on this machine"])
    if cfg.dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, DTYPES[cfg.dtype]


def build_components(cfg: RunConfig) -> Components:
    from .plugins import load_plugins

    registry = load_plugins(disabled=tuple(cfg.disable_plugins))
    device, dtype = resolve_device(cfg)
    backbone = registry.build("backbone", cfg.backbone.name, cfg.backbone.params).to(device, dtype)
    embedder = registry.build("embedder", cfg.embedder.name, cfg.embedder.params).to(device)
    retriever = registry.build("retriever", cfg.retriever.name, cfg.retriever.params)
    return Components(backbone, embedder, retriever, device)


def geometry(cfg: RunConfig, spec) -> Geometry:
    gen, ret = cfg.generation, cfg.retrieval
    return Geometry(block=gen.frames_per_block or spec.frames_per_block,
                    window=gen.window or spec.window,
                    sink=spec.sink if gen.sink is None else gen.sink,
                    k=ret.k if ret.enabled else 0, recency=ret.recency, placement=ret.placement,
                    retrieved_position=ret.retrieved_position)


def streams_of(cfg: RunConfig) -> list[dict]:
    n = cfg.samples_per_conditioning
    return [{"stream": i * n + j, "conditioning": i, "sample": j, "seed": cfg.generation.seed}
            for i in range(len(cfg.conditionings)) for j in range(n)]


def references_of(cfg: RunConfig, backbone) -> list:
    """Ground truth per stream (``Backbone.reference``; None where the backbone has none)."""
    t = cfg.generation.num_frames
    by_item = [backbone.reference(item, t) for item in cfg.conditionings]
    return [by_item[s["conditioning"]] for s in streams_of(cfg)]


def load_prefix(cfg: RunConfig, backbone, references: list) -> Tensor | None:
    p = cfg.prefix
    if p is None:
        return None
    if p.source == "reference":
        if any(r is None for r in references):
            raise ConfigError([f"prefix.source: backbone {cfg.backbone.name!r} derives no "
                               f"reference frames from these conditionings"])
        return torch.stack([r.latents[:p.frames] for r in references])
    path = Path(p.path)
    if not path.is_file():
        raise ConfigError([f"prefix.path: {path} not found"])
    if p.source in ("image", "video"):
        return _media_prefix(p, path, backbone, len(references))
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if p.kind not in tensors:
        raise ConfigError([f"prefix.path: {path} has no tensor {p.kind!r} (has {sorted(tensors)})"])
    x = tensors[p.kind].float()
    n = len(references)
    x = x[None].expand(n, *x.shape) if x.ndim == 4 else x
    if x.ndim != 5 or x.shape[0] != n:
        raise ConfigError([f"prefix: expected [F, ...] or [{n}, F, ...], got {list(x.shape)}"])
    x = x[:, :p.frames]
    return backbone.encode(x) if p.kind == "pixels" else x


def _media_prefix(p, path: Path, backbone, streams: int) -> Tensor:
    """Latents [S, F, C, H, W] of an image (one frame) or of a video's first frames, resized
    and centre-cropped to the backbone's frame size and encoded by it."""
    from .outputs.media import read_image, read_video

    spec = backbone.spec
    size = spec.pixel_size or tuple(spec.latent_shape[1:])
    stride = spec.frames_per_latent
    try:
        if p.source == "image":
            pixels = read_image(path, size)[None]  # [1, 3, h, w]
        else:
            pixels = read_video(path, size,
                                None if p.frames is None else 1 + stride * (p.frames - 1))
    except ValueError as err:
        raise ConfigError([f"prefix.path: {err}"]) from None
        pixels = pixels[:1 + (len(pixels) - 1) // stride * stride]  # whole latent frames
    latents = backbone.encode(pixels[None]).float().cpu()  # [1, F, C, H, W]
    return latents.expand(streams, *latents.shape[1:])


def make_engine(cfg: RunConfig, comps: Components, retrieval: bool) -> Engine:
    """The engine of a run config, with retrieval or natively (k = 0)."""
    g = geometry(cfg, comps.backbone.spec)
    if not retrieval:
        g = Geometry(**{**g.__dict__, "k": 0})
    errors = g.check()
    if errors:
        raise ConfigError(errors)
    return Engine(comps.backbone, comps.embedder, comps.retriever,
                  EngineOptions(g, retrieval=retrieval, query=cfg.retrieval.query,
                                cross_segments=cfg.retrieval.cross_segments,
                                budget_bytes=cfg.memory.budget_gb * 2 ** 30,
                                policy=cfg.memory.policy, storage=cfg.memory.storage,
                                tier=cfg.memory.tier), comps.device)


def generate(cfg: RunConfig, comps: Components, retrieval: bool, prefix: Tensor | None = None,
             initial_noise: Tensor | None = None, progress: bool = False,
             video: VideoStreams | None = None) -> Generation:
    """Generate every stream of ``cfg`` (in batches), with or without retrieval, from ``prefix``
    [S, P, C, H, W] when given; ``video`` decodes and writes each block as it is finished (its
    time is reported apart from generation's)."""
    from tqdm import tqdm

    engine = make_engine(cfg, comps, retrieval)
    streams = streams_of(cfg)
    t_frames = cfg.generation.num_frames
    bar = tqdm(total=t_frames * len(streams), unit="frame", disable=not progress,
               desc="retrieval" if retrieval else "native", file=sys.stderr)
    parts, logs, clock, memory = [], [], {}, {}
    start = time.perf_counter()
    for first in range(0, len(streams), cfg.generation.batch_size):
        batch = streams[first:first + cfg.generation.batch_size]
        items = [cfg.conditionings[s["conditioning"]] for s in batch]
        cond = comps.backbone.encode_conditioning(items, t_frames)
        gens = [stream_generator(s["seed"], s["stream"]) for s in batch]
        sl = slice(first, first + len(batch))
        done = [0]

        def advance(frame, clean, done=done, n=len(batch)):
            bar.update((frame - done[0]) * n)
            done[0] = frame
            if video is not None:
                video.append(clean)

        with video.batch([s["stream"] for s in batch]) if video else contextlib.nullcontext():
            out = engine.generate(
                cond, gens, t_frames, prefix=None if prefix is None else prefix[sl],
                initial_noise=None if initial_noise is None else initial_noise[sl],
                on_block=advance)
        parts.append(out.latents)
        for entry in out.log:
            entry["streams"] = [s["stream"] for s in batch]
        logs += out.log
        clock = {k: clock.get(k, 0.0) + v for k, v in out.timings.items()}
        memory = out.memory
    bar.close()
    clock["total"] = time.perf_counter() - start - clock["memory_setup"]  # reported apart
    if video is not None:
        clock["total"] -= video.seconds
        clock["decode_write"] = video.seconds
        clock["first_frame"] = video.first_frame_seconds
    return Generation(torch.cat(parts), logs, clock, memory)


def _run_dir(cfg: RunConfig) -> Path:
    root = Path(cfg.output.root)
    if cfg.output.name:
        path = root / cfg.output.name
        if path.exists():
            raise FileExistsError(f"run directory {path} exists; runs are never overwritten: "
                                  f"choose another output.name")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path, i = root / f"{stamp}-{cfg.name}", 1
        while path.exists():
            path, i = root / f"{stamp}-{cfg.name}-{i}", i + 1
    path.mkdir(parents=True)
    return path


def _summary(g: Geometry, mode: str, gen: Generation) -> dict:
    frames = gen.latents.shape[0] * gen.latents.shape[1]
    eligible_ok = all(len(ids) <= entry["eligible"] for entry in gen.log for ids in entry["ids"])
    return {"mode": mode, "streams": gen.latents.shape[0], "frames": gen.latents.shape[1],
            "seconds": round(gen.timings["total"], 3),
            "frames_per_second": round(frames / max(gen.timings["total"], 1e-9), 2),
            "timings": {k: round(v, 4) for k, v in gen.timings.items() if v is not None},
            "memory": gen.memory,
            "blocks_retrieved": sum(1 for e in gen.log if any(e["ids"])),
            "mean_retrieved": (sum(len(i) for e in gen.log for i in e["ids"])
                               / max(1, sum(len(e["ids"]) for e in gen.log))),
            "log_within_eligible_counts": eligible_ok,
            "geometry": {"block": g.block, "window": g.window, "sink": g.sink,
                         "k": g.k if mode == "retrieval" else 0, "recency": g.recency,
                         "placement": g.placement}}


def _write_mode(d: Path, cfg: RunConfig, mode: str, gen: Generation, paths: dict) -> None:
    meta = {"mode": mode, "streams": streams_of(cfg), "backbone": cfg.backbone.name}
    if cfg.output.save_latents:
        write_tensors(d / "latents.safetensors", {"latents": gen.latents}, meta)
        paths[f"{mode}_latents"] = d / "latents.safetensors"
    write_jsonl(d / "retrieval.jsonl", gen.log)
    paths[f"{mode}_log"] = d / "retrieval.jsonl"
    if cfg.output.video:
        paths[f"{mode}_videos"] = d


def _report(run_dir: Path, cfg: RunConfig, g: Geometry, pixels: dict, logs: dict,
            references: list, first_generated: int, paths: dict) -> dict | None:
    from .outputs.report import evaluate, plot_error, plot_retrieval_heatmap

    if "retrieval" in logs and logs["retrieval"]:
        plot_retrieval_heatmap(logs["retrieval"], cfg.generation.num_frames,
                               run_dir / "retrieval_heatmap.png")
        paths["retrieval_heatmap"] = run_dir / "retrieval_heatmap.png"
    metrics = evaluate(pixels, logs, references, g.window, first_generated) if pixels else None
    if metrics:
        plot_error(metrics, references, g.window, first_generated, run_dir / "error.png")
        write_json(run_dir / "metrics.json", metrics)
        paths["error_plot"], paths["metrics"] = run_dir / "error.png", run_dir / "metrics.json"
    return metrics


def _warm_up(cfg: RunConfig, comps: Components, g: Geometry) -> None:
    """Discarded blocks until the window is full (every context size the run will see, with the
    run's memory storage), so one-time costs (kernels, allocator, compilation) stay out of the
    timings. Always on a device pool: a host pool is page-locked once, for the run's size."""
    m = cfg.memory
    engine = Engine(comps.backbone, None, None, EngineOptions(
        Geometry(g.block, g.window, g.sink), retrieval=False, budget_bytes=m.budget_gb * 2 ** 30,
        storage=m.storage), comps.device)
    frames = min(cfg.generation.num_frames, g.window + g.block)
    cond = comps.backbone.encode_conditioning(cfg.conditionings[:1], cfg.generation.num_frames)
    engine.generate(cond, [stream_generator(0, 0)], frames)


def run(config, overrides: list[str] = (), prefix: Tensor | None = None,
        initial_noise: Tensor | None = None, progress: bool = False) -> RunResult:
    """Run a config (model, dict, YAML/JSON path, or None for the built-in default)."""
    cfg = validate(apply_overrides(read_config(config), list(overrides)))
    comps = build_components(cfg)
    g = geometry(cfg, comps.backbone.spec)
    errors = g.check()
    if errors:
        raise ConfigError(errors)
    modes = (["native"] if cfg.compare else []) + (["retrieval"] if cfg.retrieval.enabled else [])
    if not modes:
        modes = ["native"]
    cfg, memory_resolved = resolve_memory(  # budget_gb auto: resolved before anything runs
        cfg, comps.backbone, min(cfg.generation.batch_size, len(streams_of(cfg))),
        g.window + g.block, g.sink, comps.device)
    run_dir = _run_dir(cfg)
    with (run_dir / "config.yaml").open("w") as f:
        yaml.safe_dump(cfg.model_dump(mode="json"), f, sort_keys=False)
    latents, summaries, paths = {}, {}, {"run_dir": run_dir}
    references = references_of(cfg, comps.backbone)
    if prefix is None:
        prefix = load_prefix(cfg, comps.backbone, references)
    _warm_up(cfg, comps, g)
    pixels, logs = {}, {}
    keep_pixels = any(r is not None for r in references)
    for mode in modes:
        (run_dir / mode).mkdir()
        video = None
        if cfg.output.video or keep_pixels:
            video = VideoStreams(comps.backbone, comps.device,
                                 run_dir / mode if cfg.output.video else None, cfg.output.fps,
                                 cfg.output.video_scale, keep_pixels)
        gen = generate(cfg, comps, retrieval=mode == "retrieval", prefix=prefix,
                       initial_noise=initial_noise, progress=progress, video=video)
        latents[mode], logs[mode] = gen.latents, gen.log
        summaries[mode] = _summary(g, mode, gen)
        if keep_pixels:
            pixels[mode] = video.stacked()
        _write_mode(run_dir / mode, cfg, mode, gen, paths)
    if len(modes) == 2 and cfg.output.video:
        for s in range(len(streams_of(cfg))):
            name = f"stream_{s:03d}.mp4"
            side_by_side_files([run_dir / "native" / name, run_dir / "retrieval" / name],
                               run_dir / f"compare_{s:03d}.mp4", cfg.output.fps)
        paths["compare_videos"] = run_dir
    first_generated = 0 if prefix is None else prefix.shape[1]
    metrics = _report(run_dir, cfg, g, pixels, logs, references, first_generated, paths)
    summary = {"name": cfg.name, "device": str(comps.device), "modes": summaries}
    if memory_resolved:
        summary["memory_resolved"] = memory_resolved
    if metrics:
        for mode, m in metrics.items():
            summaries[mode].update({k: v for k, v in m.items() if k != "psnr"})
    if len(modes) == 2:
        summary["retrieval_over_native_time"] = round(
            summaries["retrieval"]["seconds"] / max(summaries["native"]["seconds"], 1e-9), 3)
        summary["max_abs_latent_difference"] = float(
            (latents["retrieval"] - latents["native"]).abs().max())
    write_json(run_dir / "summary.json", summary)
    paths["summary"] = run_dir / "summary.json"
    return RunResult(run_dir, latents, summary, paths)


def format_summary(summary: dict) -> str:
    rows = [("mode", "streams", "frames", "seconds", "frames/s", "blocks w/ retrieval",
             "PSNR dB", "PSNR revisits", "precision@K")]

    def num(v):
        return "-" if v is None else f"{v:.2f}"

    for mode, s in summary["modes"].items():
        rows.append((mode, str(s["streams"]), str(s["frames"]), f"{s['seconds']:.2f}",
                     f"{s['frames_per_second']:.1f}", str(s["blocks_retrieved"]),
                     num(s.get("mean_psnr")), num(s.get("mean_psnr_revisits")),
                     num(s.get("precision_at_k"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if "retrieval_over_native_time" in summary:
        lines.append(f"retrieval / native time: {summary['retrieval_over_native_time']:.3f}")
    return "\n".join(lines)


def run_cli(path: str | None, overrides: list[str], compare: bool = False,
            prompts: list[str] = (), image: str | None = None, video: str | None = None) -> int:
    import json

    try:
        extra = ["compare=true"] if compare else []
        if prompts:
            extra.append(f"conditionings={json.dumps(list(prompts))}")
        if image or video:
            source = {"source": "image", "path": image} if image else {"source": "video",
                                                                       "path": video}
            extra.append(f"prefix={json.dumps(source)}")
        result = run(path, list(overrides) + extra, progress=True)
    except (ConfigError, FileExistsError, ComponentError, MemoryBudgetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(result.summary))
    print(f"run directory: {result.run_dir}")
    return 0
