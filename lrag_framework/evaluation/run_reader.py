"""Read what a run wrote: ``config.yaml``, ``summary.json`` and, per mode (``native``,
``retrieval``), ``latents.safetensors`` [S, T, C, H, W], ``retrieval.jsonl`` and
``stream_NNN.mp4``. Nothing is generated or decoded here."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from torch import Tensor

MODES = ("native", "retrieval")


@dataclass
class ModeData:
    name: str
    directory: Path
    latents: Tensor | None  # [S, T, C, H, W] float, None when the run saved none
    streams: list[dict]  # one per stream: stream, conditioning, sample, seed
    log: list[dict]  # retrieval.jsonl entries
    videos: list[Path | None]  # stream_NNN.mp4 per stream (None: not written)
    summary: dict = field(default_factory=dict)  # summary.json's entry for this mode


@dataclass
class RunData:
    path: Path
    config: dict  # the resolved run config (config.yaml)
    summary: dict
    modes: dict[str, ModeData]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def first_generated(self) -> int:
        """First generated latent frame = the prefix length: ``summary.json``'s
        ``first_generated`` when recorded, else from the prefix config (``frames``; an image is
        one frame; a latents file as long as its tensor). A video prefix without ``frames`` is
        not resolved here (0)."""
        if "first_generated" in self.summary:
            return int(self.summary["first_generated"])
        prefix = self.config.get("prefix") or {}
        if not prefix:
            return 0
        if prefix.get("source") == "image":
            return 1
        frames = prefix.get("frames")
        if frames is None and prefix.get("source", "file") == "file" and prefix.get("path"):
            from safetensors import safe_open

            with safe_open(prefix["path"], "pt") as f:
                frames = f.get_slice(prefix.get("kind", "latents")).get_shape()[-4]
        return int(frames or 0)

    @property
    def fps(self) -> float:
        return float((self.config.get("output") or {}).get("fps") or 8)

    @property
    def had_reference(self) -> bool:
        """Whether the run itself measured against ground truth (PSNR in its summary)."""
        return any("mean_psnr" in m for m in (self.summary.get("modes") or {}).values())


class RunDirError(ValueError):
    """A folder is not a readable run directory."""


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _read_mode(run: Path, name: str, summary: dict, samples: int) -> ModeData:
    from safetensors import safe_open

    d = run / name
    latents, streams = None, []
    path = d / "latents.safetensors"
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            latents = f.get_tensor("latents").float()
        streams = json.loads(meta.get("streams", "[]"))
        samples = latents.shape[0]
    if not streams:
        streams = [{"stream": s} for s in range(samples)]
    videos = [d / f"stream_{s['stream']:03d}.mp4" for s in streams]
    return ModeData(name, d, latents, streams, _read_jsonl(d / "retrieval.jsonl"),
                    [v if v.is_file() else None for v in videos],
                    (summary.get("modes") or {}).get(name, {}))


def read_run(path: str | Path) -> RunData:
    """A run directory as the runner wrote it; RunDirError when it is not one."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise RunDirError(f"{path}: not a run directory (no config.yaml)")
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    streams = len(config.get("conditionings") or [None]) * int(
        config.get("samples_per_conditioning") or 1)
    modes = {m: _read_mode(path, m, summary, streams) for m in MODES if (path / m).is_dir()}
    if not modes:
        raise RunDirError(f"{path}: no native/ or retrieval/ folder")
    return RunData(path, config, summary, modes)
