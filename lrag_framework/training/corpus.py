"""Latent corpus: ``lrag collect-latents`` writes the clean latents of a backbone's videos; the
trainer reads them back lazily (memory-mapped safetensors, one slice per chunk).

Layout of ``out_dir``::

    corpus.json                 schema version, lrag version, the validated run config, shard size
    shard_00000.safetensors     one tensor per video, ``video_000000`` [F, C, H, W]; metadata
                                ``videos`` = JSON list of {key, stream, conditioning_index,
                                conditioning, sample, seed, backbone, frames, retrieval}

Video ``video_<s>`` is stream ``s`` of the run config (conditioning-major, then sample), generated
with that stream's noise generator ``stream_generator(seed, s)``, exactly as
``lrag run`` numbers its streams; so a video does not depend on the shard size or on which shards
a resumed collection still had to write. A shard appears only complete (temp name + rename);
collecting again skips the shards already there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, ValidationError
from torch import Tensor

from ..config import ConfigError, RunConfig, Strict, apply_overrides, config_differences, \
    read_config, validate, validation_errors
from ..devices import DTYPES
from ..files import folder_error, write_json, write_tensors

SCHEMA_VERSION = 1
MANIFEST = "corpus.json"


class CorpusConfig(Strict):
    """``collect-latents`` config: a run config, where to write, how many videos per shard."""

    run: dict[str, Any] = Field(description="a run config (as for ``lrag run``): backbone, "
                                "conditionings, samples_per_conditioning, generation, retrieval")
    out_dir: str
    shard_size: int = Field(16, ge=1, description="videos per shard file")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="storage dtype")


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def video_key(stream: int) -> str:
    return f"video_{stream:06d}"


def write_shard(path: str | Path, videos: dict[str, Tensor], metas: list[dict]) -> None:
    """One shard: ``videos`` = key -> [F, C, H, W]; ``metas`` one dict per video (with ``key``)."""
    if sorted(m["key"] for m in metas) != sorted(videos):
        raise ValueError(f"shard {path}: metadata keys {[m['key'] for m in metas]} != tensor "
                         f"keys {sorted(videos)}")
    for key, v in videos.items():
        if v.ndim != 4:
            raise ValueError(f"shard {path}: {key} must be [F, C, H, W], got {list(v.shape)}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_tensors(path, videos, {"schema_version": SCHEMA_VERSION, "videos": metas})


# ---------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class VideoRef:
    shard: Path
    key: str
    frames: int
    meta: dict


class LatentCorpus:
    """The videos of every ``shard_*.safetensors`` under ``root`` (sorted), read on demand."""

    def __init__(self, root: str | Path):
        from safetensors import safe_open

        self.root = Path(root)
        shards = sorted(self.root.glob("shard_*.safetensors"))
        if not shards:
            raise ValueError(f"latent corpus {self.root}: no shard_*.safetensors files")
        self._files, self.videos = {}, []
        for path in shards:
            f = safe_open(str(path), framework="pt")
            meta = f.metadata() or {}
            if json.loads(meta.get("schema_version", "null")) != SCHEMA_VERSION:
                raise ValueError(f"{path}: not a version {SCHEMA_VERSION} latent shard "
                                 f"(metadata {sorted(meta)})")
            self._files[path] = f
            for m in json.loads(meta["videos"]):
                self.videos.append(VideoRef(path, m["key"], int(m["frames"]), m))
        shapes = {tuple(self._files[v.shard].get_slice(v.key).get_shape()[1:])
                  for v in self.videos}
        if len(shapes) != 1:
            raise ValueError(f"latent corpus {self.root}: frames of different shapes {shapes}")
        self.frame_shape: tuple[int, ...] = shapes.pop()  # (C, H, W)

    def __len__(self) -> int:
        return len(self.videos)

    def frames(self, video: int, start: int = 0, stop: int | None = None) -> Tensor:
        """Frames ``[start, stop)`` of video ``video``: [n, C, H, W] float32."""
        ref = self.videos[video]
        return self._files[ref.shard].get_slice(ref.key)[start:stop].float()


# ---------------------------------------------------------------------------- collecting

def _manifest(cfg: CorpusConfig, run: RunConfig) -> dict:
    from .. import __version__

    what = run.model_dump(mode="json", exclude={"output", "compare", "device"})
    return {"schema_version": SCHEMA_VERSION, "lrag_version": __version__, "run": what,
            "shard_size": cfg.shard_size, "dtype": cfg.dtype}


def _check_manifest(path: Path, manifest: dict) -> None:
    """A resumed collection must be the same collection: same run, shard size and dtype."""
    old = json.loads(path.read_text())
    keys = ("schema_version", "run", "shard_size", "dtype")
    diff = config_differences({k: old.get(k) for k in keys}, {k: manifest[k] for k in keys},
                              then="in the collection")
    if diff:
        raise ConfigError([f"{path} was written by a different collection; use another "
                           f"out_dir or remove it"] + diff)


def collect_latents(cfg: CorpusConfig, progress: Callable[[int], object] | None = None) -> dict:
    """Generate every video of ``cfg.run`` not yet on disk; returns counts and the out_dir.
    ``progress(total videos)``: an object with ``update(n)`` and ``close()`` (e.g. tqdm)."""
    from ..generation.pipeline import Pipeline, modes_of

    try:
        run = validate(cfg.run)
    except ConfigError as err:
        raise ConfigError([f"run.{e}" for e in err.errors]) from None
    run = run.model_copy(update={"output": run.output.model_copy(update={"video": False})})
    out = Path(cfg.out_dir)
    problem = folder_error(out)
    if problem:
        raise ConfigError([f"out_dir: {problem}"])
    manifest = _manifest(cfg, run)
    if (out / MANIFEST).exists():
        _check_manifest(out / MANIFEST, manifest)
    pipe = Pipeline(run)
    shards = [pipe.streams[i:i + cfg.shard_size]
              for i in range(0, len(pipe.streams), cfg.shard_size)]
    todo = [i for i in range(len(shards)) if not (out / shard_name(i)).exists()]
    counts = {"out_dir": str(out), "videos": len(pipe.streams), "shards": len(shards),
              "written": len(todo), "skipped": len(shards) - len(todo)}
    if not todo:
        return counts
    with pipe.setup(warm_up=False):
        mode = modes_of(run)[-1]  # retrieval when enabled, else native
        retrieval = pipe.geometry_of(mode).k > 0
        out.mkdir(parents=True, exist_ok=True)
        if not (out / MANIFEST).exists():
            write_json(out / MANIFEST, manifest)
        backbone = run.backbone.model_dump(mode="json")
        bar = progress(sum(len(shards[i]) for i in todo)) if progress else None
        try:
            for index in todo:
                gen = pipe.generate(mode, shards[index],
                                    on_frames=None if bar is None else
                                    lambda n: bar.update(n / run.generation.num_frames))
                videos, metas = {}, []
                for s, latents in zip(shards[index], gen.latents):  # [F, C, H, W] each
                    key = video_key(s.index)
                    videos[key] = latents.to(DTYPES[cfg.dtype])
                    metas.append({"key": key, "stream": s.index,
                                  "conditioning_index": s.conditioning,
                                  "conditioning": run.conditionings[s.conditioning],
                                  "sample": s.sample, "seed": s.seed, "backbone": backbone,
                                  "frames": run.generation.num_frames, "retrieval": retrieval})
                write_shard(out / shard_name(index), videos, metas)
        finally:
            if bar is not None:
                bar.close()
    return counts


def load_corpus_config(path: str | Path | None, overrides: list[str]) -> CorpusConfig:
    if path is None:
        raise ConfigError(["collect-latents needs a config file"])
    data = apply_overrides(read_config(path), list(overrides))
    try:
        return CorpusConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_errors(err)) from None
