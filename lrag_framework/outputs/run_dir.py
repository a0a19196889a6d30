"""``run(config)``: a Pipeline's results on disk.

The run directory is created only once the pipeline is set up (components built, geometry and
start frames checked), so a bad config or input leaves nothing behind. Then, per mode, each
finished block is decoded and appended to the growing videos (``streaming.VideoStreams``) and
the mode's latents and retrieval log are written; at the end the side-by-side videos, the report
against ground truth (``report``) and ``summary.json``. Every file appears under its final name
only when complete (``files``).
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from torch import Tensor

from ..config import ConfigError, RunConfig, config_record, load_config
from ..files import (folder_error, os_error_text, read_tensors, write_json, write_jsonl,
                     write_tensors, write_yaml)
from ..generation.engine import Generation
from ..generation.pipeline import Pipeline
from ..generation.plan import Geometry
from .resume import RunState, tensor_sha256
from .streaming import VideoStreams

# progress(mode, total frames) -> an object with update(n) and close(), e.g. tqdm
Progress = Callable[[str, int], object]


@dataclass
class RunResult:
    run_dir: Path
    latents: dict[str, Tensor]  # mode ("retrieval" / "native") -> [S, T, C, H, W]
    summary: dict
    paths: dict[str, Path] = field(default_factory=dict)
    already_complete: bool = False  # a resume found nothing left to do


def stopped_run(err: BaseException) -> Path | None:
    """The run directory a run kept when ``err`` stopped it after its first block (its
    partial outputs and resumable state: ``lrag run --resume``), else None."""
    return getattr(err, "lrag_run_dir", None)


def stop_message(err: BaseException) -> str:
    """One line: what stopped the run, what was kept, how to resume."""
    run_dir = stopped_run(err)
    if isinstance(err, KeyboardInterrupt):
        what = "interrupted"
    elif isinstance(err, OSError):  # the machine refused: a full disk, a read-only file system
        what = f"failed: {os_error_text(err)}"
    else:
        what = f"failed: {type(err).__name__}: {' '.join(str(err).split())}"
    return (f"run {what}; kept {run_dir} (complete files, playable .partial videos, the blocks "
            f"done so far): lrag run --resume {run_dir}")


def run(config=None, overrides: list[str] = (), prefix: Tensor | None = None,
        initial_noise: Tensor | None = None, progress: Progress | None = None,
        resume: str | Path | None = None) -> RunResult:
    """Run a config (model, dict, YAML/JSON path, or None for the built-in default).

    ``prefix`` [S, P, C, H, W]: start latents (instead of ``config.prefix``); ``initial_noise``
    [S, T, C, H, W]: replaces each block's drawn initial noise. ``resume``: finish the
    interrupted run in this directory (``config``/``overrides``, if given, must be the run's).

    Raises ConfigError (and the other bad-input errors) before the run directory exists. An
    error after the first block (KeyboardInterrupt too) propagates as it is, with the kept run
    directory in its notes and in ``stopped_run(err)``."""
    if resume is not None:
        return _resume(Path(resume), config, overrides, prefix, initial_noise, progress)
    cfg = load_config(config, overrides)
    output_errors(cfg)
    with Pipeline(cfg).setup(prefix, initial_noise) as pipe:
        return RunWriter(pipe, request(cfg, pipe)).write(progress)


def check_run(config=None, overrides: list[str] = ()) -> RunConfig:
    """Every check ``run`` makes before generating (``Pipeline.check`` plus the output folder),
    without the warm-up and without writing anything; returns the config as a run resolves it."""
    cfg = load_config(config, overrides)
    with Pipeline(cfg) as pipe:
        pipe.check()
        output_errors(pipe.cfg)
        return pipe.cfg


def output_errors(cfg: RunConfig) -> None:
    """The run directory could be created: its nearest existing ancestor is a writable folder
    and an explicit ``output.name`` is free. Raises ConfigError."""
    root = Path(cfg.output.root)
    if cfg.output.name and (root / cfg.output.name).exists():
        raise ConfigError([f"output.name: run directory {root / cfg.output.name} exists; runs "
                           f"are never overwritten: choose another output.name"])
    problem = folder_error(root)
    if problem:
        raise ConfigError([f"output.root: {problem}"])


def request(cfg: RunConfig, pipe: Pipeline) -> dict:
    """What a resume must find unchanged: the config as validated and the start inputs."""
    return {"config": config_record(cfg), "prefix_sha256": tensor_sha256(pipe.prefix),
            "initial_noise_sha256": tensor_sha256(pipe.initial_noise),
            "memory_resolved": pipe.memory_resolved}


def _resume(run_dir: Path, config, overrides, prefix, initial_noise, progress) -> RunResult:
    state = RunState(run_dir)
    saved = state.read_request()
    if state.complete:
        summary = json.loads((run_dir / "summary.json").read_text())
        latents = {m: read_tensors(run_dir / m / "latents.safetensors")["latents"]
                   for m in summary["modes"] if (run_dir / m / "latents.safetensors").is_file()}
        return RunResult(run_dir, latents, summary, {"run_dir": run_dir}, already_complete=True)
    given = config is not None or bool(overrides)
    if given:
        cfg = load_config(config, overrides)
        state.check_same(saved, {"config": config_record(cfg), **_inputs(saved)})
    elif "tensor" in str(saved["config"].get("conditionings")):
        raise ConfigError([f"--resume: {run_dir} was run with tensor conditionings; pass the "
                           f"same config to resume it"])
    else:
        cfg = load_config(saved["config"])
    resolved = load_config(run_dir / "config.yaml").memory  # as the run resolved it
    cfg = cfg.model_copy(update={"memory": resolved})
    with Pipeline(cfg).setup(prefix, initial_noise) as pipe:
        state.check_same(saved, {"config": saved["config"], **_inputs(request(cfg, pipe))})
        pipe.memory_resolved = saved.get("memory_resolved")
        return RunWriter(pipe, saved, state).write(progress)


def _inputs(req: dict) -> dict:
    return {k: req.get(k) for k in ("prefix_sha256", "initial_noise_sha256")}


def run_dir_for(cfg: RunConfig) -> Path:
    """A new directory under ``output.root``: ``output.name``, or timestamp + config name."""
    output_errors(cfg)
    root = Path(cfg.output.root)
    if cfg.output.name:
        path = root / cfg.output.name  # a plain folder name (OutputConfig)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        label = re.sub(r"[^\w.-]+", "_", cfg.name)[:64] or "run"
        path, i = root / f"{stamp}-{label}", 1
        while path.exists():
            path, i = root / f"{stamp}-{label}-{i}", i + 1
    try:
        path.mkdir(parents=True)
    except OSError as err:
        raise ConfigError([f"output.root: cannot create {path}: {err.strerror or err}"]) from None
    return path


def _outermost_missing(folder: Path) -> Path | None:
    """The outermost missing folder on the way to ``folder`` (the run creates it), or None."""
    missing = None
    while not folder.exists() and folder != folder.parent:
        missing, folder = folder, folder.parent
    return missing


def _remove_empty(folder: Path, up_to: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``up_to`` while empty: the output root folders a
    run created and then left nothing in."""
    if up_to is None:
        return
    while folder.is_relative_to(up_to):
        try:
            folder.rmdir()
        except OSError:  # not empty: another run uses it
            return
        folder = folder.parent


class RunWriter:
    """Writes one set-up pipeline's modes into a new run directory."""

    def __init__(self, pipe: Pipeline, request: dict, state: RunState | None = None):
        self.pipe, self.cfg = pipe, pipe.cfg  # the config as set up (memory auto resolved)
        self.keep_pixels = any(r is not None for r in pipe.references)
        self.request, self.state = request, state  # state: resuming this run

    def write(self, progress: Progress | None = None) -> RunResult:
        """The run's files; a stop before the first saved block removes the new run
        directory, a later one keeps it resumable (``stopped_run``)."""
        resuming = self.state is not None
        if not resuming:
            made = _outermost_missing(Path(self.cfg.output.root))
            run_dir = run_dir_for(self.cfg)
            self.state = RunState(run_dir)
        run_dir = self.state.run_dir
        try:
            if not resuming:
                write_yaml(run_dir / "config.yaml", config_record(self.cfg))
                self.state.write_request(self.request)
            result = self._write(run_dir, progress)
        except BaseException as err:
            if not resuming and not self.state.has_blocks():
                shutil.rmtree(run_dir, ignore_errors=True)
                _remove_empty(run_dir.parent, made)
                err.add_note("the run stopped before its first block was saved; nothing "
                             "was kept")
                raise
            err.lrag_run_dir = run_dir
            err.add_note(stop_message(err))
            raise
        self.state.clear()
        return result

    def _write(self, run_dir: Path, progress: Progress | None) -> RunResult:
        pipe, cfg = self.pipe, self.cfg
        latents, logs, pixels, summaries, resumed = {}, {}, {}, {}, {}
        paths = {"run_dir": run_dir}
        for mode in pipe.modes:
            state = self.state.mode(mode)
            kept = state.mode_done()
            gen, video = self._generate(run_dir / mode, mode, progress, state)
            latents[mode], logs[mode] = gen.latents, gen.log
            summaries[mode] = kept or mode_summary(pipe.geometry_of(mode), mode, gen)
            resumed[mode] = "kept" if kept else gen.resumed
            if self.keep_pixels:
                pixels[mode] = video.stacked()
            paths |= self._write_mode(run_dir / mode, mode, gen)
            state.finish_mode(summaries[mode])
        if len(pipe.modes) == 2 and cfg.output.video:
            paths |= self._compare_videos(run_dir)
        metrics, report_paths = self._report(run_dir, pixels, logs)
        paths |= report_paths
        for mode, m in (metrics or {}).items():
            summaries[mode].update({k: v for k, v in m.items() if k != "psnr"})
        summary = {"name": cfg.name, "device": str(pipe.device), "modes": summaries,
                   "first_generated": pipe.first_generated,
                   "setup_seconds": {"warm_up": round(pipe.warm_up_seconds, 3)}}
        if pipe.memory_resolved:
            summary["memory_resolved"] = pipe.memory_resolved
        if any(r == "kept" or r.get("batches_kept") or r.get("blocks_fed_back")
               for r in resumed.values()):
            summary["resumed"] = resumed
        if len(pipe.modes) == 2:
            summary["retrieval_over_native_time"] = round(
                summaries["retrieval"]["seconds"] / max(summaries["native"]["seconds"], 1e-9), 3)
            summary["max_abs_latent_difference"] = float(
                (latents["retrieval"] - latents["native"]).abs().max())
        write_json(run_dir / "summary.json", summary)
        paths["summary"] = run_dir / "summary.json"
        return RunResult(run_dir, latents, summary, paths)

    def _generate(self, folder: Path, mode: str, progress: Progress | None, state
                  ) -> tuple[Generation, VideoStreams | None]:
        pipe, out = self.pipe, self.cfg.output
        folder.mkdir(exist_ok=True)
        video = None
        if out.video or self.keep_pixels:
            video = VideoStreams(pipe.backbone, pipe.device, folder if out.video else None,
                                 out.fps, out.video_scale, self.keep_pixels)
        bar = progress(mode, pipe.num_frames * len(pipe.streams)) if progress else None
        try:
            gen = pipe.generate(mode, video=video, on_frames=bar.update if bar else None,
                                state=state)
        finally:
            if bar is not None:
                bar.close()
        return gen, video

    def _write_mode(self, folder: Path, mode: str, gen: Generation) -> dict[str, Path]:
        paths = {}
        meta = {"mode": mode, "streams": [s.as_dict() for s in self.pipe.streams],
                "backbone": self.cfg.backbone.name}
        if self.cfg.output.save_latents:
            write_tensors(folder / "latents.safetensors", {"latents": gen.latents}, meta)
            paths[f"{mode}_latents"] = folder / "latents.safetensors"
        write_jsonl(folder / "retrieval.jsonl", gen.log)
        paths[f"{mode}_log"] = folder / "retrieval.jsonl"
        if self.cfg.output.video:
            paths[f"{mode}_videos"] = folder
        return paths

    def _compare_videos(self, run_dir: Path) -> dict[str, Path]:
        from .media import side_by_side_files

        for s in self.pipe.streams:
            name = f"stream_{s.index:03d}.mp4"
            side_by_side_files([run_dir / "native" / name, run_dir / "retrieval" / name],
                               run_dir / f"compare_{s.index:03d}.mp4", self.cfg.output.fps,
                               labels=["native", f"retrieval (K={self.pipe.geometry.k})"])
        return {"compare_videos": run_dir}

    def _report(self, run_dir: Path, pixels: dict, logs: dict) -> tuple[dict | None, dict]:
        from .report import evaluate, plot_error, plot_retrieval_heatmap

        pipe, paths = self.pipe, {}
        g = pipe.geometry
        if logs.get("retrieval"):
            plot_retrieval_heatmap(logs["retrieval"], pipe.num_frames,
                                   run_dir / "retrieval_heatmap.png", pipe.references, g)
            paths["retrieval_heatmap"] = run_dir / "retrieval_heatmap.png"
        refs, first = pipe.references, pipe.first_generated
        metrics = evaluate(pixels, logs, refs, g, first) if pixels else None
        if metrics:
            plot_error(metrics, refs, g, first, run_dir / "error.png")
            write_json(run_dir / "metrics.json", metrics)
            paths["error_plot"], paths["metrics"] = run_dir / "error.png", run_dir / "metrics.json"
        return metrics, paths


def mode_summary(g: Geometry, mode: str, gen: Generation) -> dict:
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
            "geometry": {"block": g.block, "window": g.window, "sink": g.sink, "k": g.k,
                         "recency": g.recency, "placement": g.placement,
                         "positions": g.positions}}
