"""Per-frame features of a run's videos, computed once and cached under ``RUN_DIR/eval/features``.

A cached file is used only when its identity matches: the extractor, its preprocessing, the
fingerprints of its weight files and of the video (as the prompt cache keys on the encoder's
files). Models are built only on a cache miss; each video is decoded once for all extractors.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..files import fingerprint, write_tensors
from ..outputs.media import video_frames
from .extractors import PREPROCESS, Extractor
from .weights import model_files

PROTOCOL = 1  # bump when preprocessing or feature definitions change


class FeatureSource:
    """One extractor's weights (resolved, not yet loaded) and its lazily built model."""

    def __init__(self, key: str, folder: Path, device: torch.device):
        self.key, self.folder, self.device = key, folder, device
        self.files = model_files(folder)
        self._weights = [fingerprint(p) for p in self.files]
        self._model: Extractor | None = None

    def identity(self, video: Path) -> str:
        text = json.dumps({"key": self.key, "protocol": PROTOCOL,
                           "preprocess": repr(PREPROCESS[self.key]), "weights": self._weights,
                           "video": fingerprint(video)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def __call__(self, frames: Tensor) -> Tensor:
        if self._model is None:
            self._model = Extractor(self.key, self.folder, self.device)
        return self._model(frames)


def _cached(path: Path, identity: str) -> Tensor | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        if (f.metadata() or {}).get("identity") != json.dumps(identity):
            return None
        return f.get_tensor("features")


def video_features(video: Path, sources: list[FeatureSource], cache_dir: Path | None,
                   batch_size: int) -> dict[str, Tensor]:
    """Features [T, D] of every frame of ``video`` for each source (cache first)."""
    out, todo, paths = {}, [], {}
    for src in sources:
        ident = src.identity(video)
        paths[src.key] = (None if cache_dir is None else
                          cache_dir / f"{video.parent.name}.{video.stem}.{src.key}.safetensors",
                          ident)
        hit = _cached(paths[src.key][0], ident) if cache_dir is not None else None
        if hit is None:
            todo.append(src)
        else:
            out[src.key] = hit
    if not todo:
        return out
    parts: dict[str, list[Tensor]] = {src.key: [] for src in todo}
    with video_frames(video) as (_, frames):
        batch = []
        for frame in [*frames, None]:
            if frame is not None:
                batch.append(frame)
            if batch and (frame is None or len(batch) == batch_size):
                x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float()  # [B, 3, H, W]
                for src in todo:
                    parts[src.key].append(src(x))
                batch = []
    for src in todo:
        out[src.key] = torch.cat(parts[src.key])
        path, ident = paths[src.key]
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_tensors(path, {"features": out[src.key]}, {"identity": ident})
    return out
