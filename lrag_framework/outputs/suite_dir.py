"""``run_suite``: a prompt suite into one run directory, on one process or sharded over ranks.

Layout (``docs/suites.md``)::

    RUN_DIR/config.yaml              the run config (conditionings: the suite's, in order)
    RUN_DIR/suite.json               the items (name, conditioning, image, seed, position)
    RUN_DIR/MODE/NAME.sK.mp4         one video per (item, sample K, mode)
    RUN_DIR/MODE/NAME.sK.safetensors its latents [T, C, H, W]; NAME.sK.retrieval.jsonl its log
    RUN_DIR/index.rankR.jsonl        rank R's rows, appended as each video completes
    RUN_DIR/index.jsonl              the merged index (rank 0, at the end); summary.json

Every rank sets up its own pipeline, generates its shard of the unfinished (item, sample)
streams in batches and appends one index row per (item, sample, mode) once its files are
complete, so a rank that dies loses at most its batch in flight. A bad item (an unreadable
image, an empty prompt) is retried alone and, if it fails again, recorded as failed with its
reason; the suite goes on. ``resume`` finishes a suite: rows ``ok`` whose files exist are
skipped, the rest (failed ones too) redone.
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import ConfigError, PrefixConfig, config_differences, config_record, load_config
from ..distributed import World, rank_device
from ..files import (append_jsonl, os_error_text, read_jsonl, write_json, write_jsonl,
                     write_tensors, write_yaml)
from ..generation.pipeline import Pipeline, Stream
from ..interfaces import ComponentError
from ..suites import SuiteItem, items_from_dicts, parse_suite, stem
from .run_dir import run_dir_for
from .streaming import VideoStreams

SUITE_FILE, INDEX_FILE = "suite.json", "index.jsonl"
ITEM_ERRORS = (ValueError, OSError, ComponentError)  # what a bad item raises (ConfigError too)
Progress = Callable[[str, int], object]  # (description, total) -> update(n), close()


@dataclass(frozen=True)
class Unit:
    """One (item, sample) stream and the modes it still needs."""

    item: SuiteItem
    sample: int
    modes: tuple[str, ...]


class SuiteStopped(Exception):
    """A suite stopped by an interrupt or an error that is not an item's: what is indexed is
    kept, ``lrag run --resume RUN_DIR`` finishes it."""

    def __init__(self, run_dir: Path, cause: BaseException):
        self.run_dir, self.interrupted = run_dir, isinstance(cause, KeyboardInterrupt)
        what = "interrupted" if self.interrupted else f"stopped by {type(cause).__name__}: {cause}"
        super().__init__(f"suite {what}; the videos in its index are kept: finish it with "
                         f"lrag run --resume {run_dir}")


@dataclass
class SuiteResult:
    run_dir: Path
    summary: dict
    index: list[dict]


def is_suite_dir(path: str | Path) -> bool:
    return (Path(path) / SUITE_FILE).is_file()


def run_suite(config=None, prompts: str | Path | None = None, overrides: list[str] = (),
              resume: str | Path | None = None, world: World = World(),
              progress: Progress | None = None) -> SuiteResult | None:
    """Generate a suite (``prompts``: a suite file) or finish one (``resume``: its run
    directory). Returns the result on rank 0, None on the other ranks."""
    if resume is not None:
        run_dir = Path(resume)
        if not is_suite_dir(run_dir):
            raise ConfigError([f"--resume: {run_dir} is not a suite run directory (no "
                               f"{SUITE_FILE})"])
        cfg = load_config(run_dir / "config.yaml")
        diff = overrides and config_differences(
            config_record(cfg), config_record(load_config(run_dir / "config.yaml", overrides)))
        if diff:
            raise ConfigError([f"--resume: --set {' '.join(overrides)} changes the config of "
                               f"{run_dir}; a suite is finished with the config it began"] + diff)
        items = items_from_dicts(json.loads((run_dir / SUITE_FILE).read_text())["items"])
    else:
        cfg = load_config(config, overrides)
        items = parse_suite(prompts)
        cfg = cfg.model_copy(update={"conditionings": [i.conditioning for i in items]})
        run_dir = None
    configured_device = cfg.device  # config.yaml keeps it: each rank resolves its own
    cfg = cfg.model_copy(update={"device": rank_device(world, cfg.device)})
    started = time.perf_counter()
    # set up for one batch (memory is sized per batch); set_inputs gives each batch its items
    first = cfg.conditionings[:-(-cfg.generation.batch_size // cfg.samples_per_conditioning)]
    pipe = Pipeline(cfg.model_copy(update={"conditionings": first})).setup(
        warm_up=False, inputs=False)
    try:
        plan = None
        if world.main:
            try:
                plan = start(run_dir, cfg, pipe, items, configured_device)
            except (ConfigError, OSError) as err:  # every rank stops with it, none waits
                world.broadcast({"errors": err.errors if isinstance(err, ConfigError)
                                 else [os_error_text(err)]})
                raise
        plan = world.broadcast(plan)
        if "errors" in plan:
            raise ConfigError(plan["errors"])
        run_dir = Path(plan["run_dir"])
        setup_seconds = time.perf_counter() - started
        watcher = None
        if world.main and progress is not None:
            total = sum(len(u.modes) for u in plan["todo"])
            watcher = ShardWatcher(run_dir, plan["baseline"], progress("suite", total))
        try:
            writer = SuiteWriter(pipe, run_dir, world)
            writer.generate(world.shard(plan["todo"]))
        except (KeyboardInterrupt, Exception) as err:
            raise SuiteStopped(run_dir, err) from err
        finally:
            if watcher is not None:
                watcher.stop()
        stats = {"rank": world.rank, "device": str(pipe.device),
                 "setup_seconds": round(setup_seconds, 3),
                 "warm_up_seconds": round(writer.warm_up_seconds, 3),
                 "generate_seconds": round(writer.seconds, 3), "videos": writer.written,
                 "frames": writer.frames}
    finally:
        pipe.close()
    ranks = world.gather(stats)
    if not world.main:
        return None
    return finish(run_dir, items, cfg, ranks, plan["skipped"])


def start(run_dir: Path | None, cfg, pipe: Pipeline, items: list[SuiteItem],
          device: str) -> dict:
    """Rank 0: the run directory (created, or the one resumed) and the work left in it."""
    if run_dir is None:
        run_dir = run_dir_for(cfg)
        try:
            write_yaml(run_dir / "config.yaml", pipe.cfg.model_dump(mode="json") | {
                "device": device, "conditionings": [i.conditioning for i in items]})
            write_json(run_dir / SUITE_FILE, {"items": [i.as_dict() for i in items]})
        except OSError:  # a full disk, a read-only file system: nothing is left behind
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
    done = complete_rows(read_index(run_dir), run_dir)
    todo = todo_units(items, cfg.samples_per_conditioning, pipe.modes, done)
    return {"run_dir": str(run_dir), "todo": todo, "skipped": len(done),
            "baseline": count_shard_rows(run_dir)}


# ---------------------------------------------------------------------------- work and index

def todo_units(items: list[SuiteItem], samples: int, modes: list[str],
               done: dict[tuple, dict]) -> list[Unit]:
    """Every (item, sample) stream with the modes not yet complete, in suite order."""
    out = []
    for item in items:
        for j in range(samples):
            need = tuple(m for m in modes if (item.name, j, m) not in done)
            if need:
                out.append(Unit(item, j, need))
    return out


def read_index(run_dir: Path) -> list[dict]:
    """Rows of the merged index and of every rank's shard: per (item, sample, mode) the latest
    ``ok`` row, else the latest row."""
    best: dict[tuple, dict] = {}
    files = [run_dir / INDEX_FILE] if (run_dir / INDEX_FILE).is_file() else []
    for path in files + sorted(run_dir.glob("index.rank*.jsonl")):
        for row in read_jsonl(path):
            key = (row["item"], row["sample"], row["mode"])
            old = best.get(key)
            if old is None or (row["status"] == "ok", row["time"]) >= (old["status"] == "ok",
                                                                      old["time"]):
                best[key] = row
    return sorted(best.values(), key=lambda r: (r["position"], r["sample"], r["mode"]))


def complete_rows(rows: list[dict], run_dir: Path) -> dict[tuple, dict]:
    """Rows whose status is ok and whose files all exist."""
    return {(r["item"], r["sample"], r["mode"]): r for r in rows if r["status"] == "ok"
            and all((run_dir / f).is_file() for f in r["files"].values())}


def count_shard_rows(run_dir: Path) -> int:
    return sum(len(read_jsonl(p)) for p in run_dir.glob("index.rank*.jsonl"))


class ShardWatcher:
    """Rank 0's progress over all ranks: counts the rows of the index shards twice a second."""

    def __init__(self, run_dir: Path, baseline: int, bar, interval: float = 0.5):
        self.run_dir, self.seen, self.bar = run_dir, baseline, bar
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True,
                                        name="lrag-suite-progress")
        self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._poll()

    def _poll(self) -> None:
        now = count_shard_rows(self.run_dir)
        if now > self.seen:
            self.bar.update(now - self.seen)
            self.seen = now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        self.bar.close()


def finish(run_dir: Path, items: list[SuiteItem], cfg, ranks: list[dict],
           skipped: int) -> SuiteResult:
    """Rank 0, once every rank is done: the merged index (shards folded in) and summary."""
    index = read_index(run_dir)
    write_jsonl(run_dir / INDEX_FILE, index)
    for shard in run_dir.glob("index.rank*.jsonl"):
        shard.unlink()
    failed = [r for r in index if r["status"] != "ok"]
    frames = sum(r["frames"] for r in ranks)
    seconds = max(r["generate_seconds"] for r in ranks)
    summary = {"name": cfg.name, "items": len(items),
               "samples_per_conditioning": cfg.samples_per_conditioning,
               "videos": len(index), "ok": len(index) - len(failed), "failed": len(failed),
               "skipped_complete": skipped, "world_size": len(ranks),
               "frames_per_second": round(frames / max(seconds, 1e-9), 2), "ranks": ranks,
               "failures": [{k: r[k] for k in ("item", "sample", "mode", "reason")}
                            for r in failed]}
    write_json(run_dir / "summary.json", summary)
    return SuiteResult(run_dir, summary, index)


# ---------------------------------------------------------------------------- one rank's work

class SuiteWriter:
    """Generates one rank's units in batches, writing each video's files and index rows."""

    def __init__(self, pipe: Pipeline, run_dir: Path, world: World):
        self.pipe, self.run_dir, self.cfg = pipe, run_dir, pipe.cfg
        self.shard = run_dir / f"index.rank{world.rank}.jsonl"
        self.rank = world.rank
        self.seconds = self.warm_up_seconds = 0.0
        self.written = self.frames = 0
        self._warm = False
        for mode in pipe.modes:
            (run_dir / mode).mkdir(exist_ok=True)

    def generate(self, units: list[Unit]) -> None:
        for batch in batches(units, self.cfg.generation.batch_size):
            self._batch(batch, {})

    def _batch(self, batch: list[Unit], done: dict) -> None:
        """All modes of a batch; on an item error each unit alone, then failures recorded."""
        try:
            self._generate(batch, done)
        except ITEM_ERRORS as err:
            if len(batch) > 1:
                for unit in batch:
                    self._batch([unit], done)
                return
            unit = batch[0]
            for mode in unit.modes:
                if (unit.item.name, unit.sample, mode) not in done:
                    self._row(unit, mode, "failed", reason=failure_reason(err))

    def _generate(self, batch: list[Unit], done: dict) -> None:
        pipe = self.pipe
        items = list({u.item.name: u.item for u in batch}.values())
        image = items[0].image
        pipe.set_inputs([i.conditioning for i in items],
                        start=PrefixConfig(source="image", path=image) if image else None)
        if not self._warm:  # one-time costs out of the timings, on the first good inputs
            self.warm_up_seconds, self._warm = pipe.warm_up(), True
        n = self.cfg.samples_per_conditioning
        for mode in pipe.modes:
            units = [u for u in batch if mode in u.modes
                     and (u.item.name, u.sample, mode) not in done]
            if not units:
                continue
            streams = [self._stream(items.index(u.item), u, n) for u in units]
            names = {s.index: stem(u.item, u.sample) for s, u in zip(streams, units)}
            out = self.cfg.output
            video = VideoStreams(pipe.backbone, pipe.device, self.run_dir / mode, out.fps,
                                 out.video_scale, False, names) if out.video else None
            gen = pipe.generate(mode, streams, video=video)
            self.seconds += gen.timings["total"] + gen.timings.get("decode_write", 0.0)
            for i, (s, u) in enumerate(zip(streams, units)):
                files = self._write(mode, names[s.index], u, s, gen, i)
                self._row(u, mode, "ok", files=files, seed=s.seed, noise_key=s.noise_key,
                          timings={"batch_streams": len(units),
                                   **{k: round(v, 4) for k, v in gen.timings.items()
                                      if v is not None}})
                done[(u.item.name, u.sample, mode)] = True
                self.written += 1
                self.frames += gen.latents.shape[1]

    def _stream(self, position: int, unit: Unit, samples: int) -> Stream:
        """The stream of a unit in the current inputs (its prefix row), keyed by its name."""
        seed, key = unit.item.noise(unit.sample, self.cfg.generation.seed)
        return Stream(position * samples + unit.sample, position, unit.sample, seed,
                      noise_key=key)

    def _write(self, mode: str, name: str, unit: Unit, stream: Stream, gen, i: int) -> dict:
        folder, files = self.run_dir / mode, {}
        if self.cfg.output.video:
            files["video"] = f"{mode}/{name}.mp4"
        if self.cfg.output.save_latents:
            meta = {"item": unit.item.name, "sample": unit.sample, "mode": mode,
                    "seed": stream.seed, "noise_key": stream.noise_key,
                    "backbone": self.cfg.backbone.name}
            write_tensors(folder / f"{name}.safetensors", {"latents": gen.latents[i]}, meta)
            files["latents"] = f"{mode}/{name}.safetensors"
        write_jsonl(folder / f"{name}.retrieval.jsonl", stream_log(gen.log, stream.index))
        files["log"] = f"{mode}/{name}.retrieval.jsonl"
        return files

    def _row(self, unit: Unit, mode: str, status: str, **extra) -> None:
        row = {"item": unit.item.name, "position": unit.item.position, "sample": unit.sample,
               "mode": mode, "status": status, "rank": self.rank, "time": time.time()}
        append_jsonl(self.shard, row | {"seed": unit.item.seed, "files": {}} | extra)


def failure_reason(err: BaseException) -> str:
    """One line: the error's type and message (a ConfigError's lines joined)."""
    text = "; ".join(err.errors) if isinstance(err, ConfigError) else str(err)
    return f"{type(err).__name__}: {' '.join(text.split())}"


def stream_log(log: list[dict], index: int) -> list[dict]:
    """One stream's entries of a batch's retrieval log (``eligible``: the batch's largest)."""
    out = []
    for entry in log:
        j = entry["streams"].index(index)
        out.append({"block_start": entry["block_start"], "query_frame": entry["query_frame"],
                    "segment": entry["segment"][j], "eligible": entry["eligible"],
                    "ids": entry["ids"][j], "scores": entry["scores"][j]})
    return out


def batches(units: list[Unit], size: int) -> list[list[Unit]]:
    """Consecutive units, at most ``size`` a batch; items with different start images never
    share one (the start frames of a batch come from one source)."""
    out: list[list[Unit]] = []
    for u in units:
        if out and len(out[-1]) < size and out[-1][0].item.image == u.item.image:
            out[-1].append(u)
        else:
            out.append([u])
    return out
