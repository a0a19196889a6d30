"""Run outputs, written atomically: a file appears under its final name only once complete.
Videos are streamed (``media.StreamingVideoWriter``) and follow the same rule."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")  # keeps the suffix for ffmpeg
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict | None = None):
    from safetensors.torch import save_file

    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)


def uint8_frames(pixels: Tensor, scale: int = 1) -> Tensor:
    """Pixels [..., 3, h, w] in [-1, 1] -> uint8 [..., h*scale, w*scale, 3] on their device
    (cropped to even sizes for h264)."""
    x = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if scale > 1:
        x = x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    return x.movedim(-3, -1).contiguous()


def to_uint8_frames(pixels: Tensor, scale: int = 1) -> np.ndarray:
    """Pixels [T, 3, h, w] in [-1, 1] -> uint8 array [T, h*scale, w*scale, 3]."""
    return uint8_frames(pixels, scale).cpu().numpy()


def side_by_side(*videos: np.ndarray, gap: int = 4) -> np.ndarray:
    """Concatenate uint8 videos [T, H, W, 3] horizontally with a white gap (T: the shortest)."""
    t = min(v.shape[0] for v in videos)
    h = max(v.shape[1] for v in videos)
    parts = []
    for i, v in enumerate(videos):
        if i:
            parts.append(np.full((t, h, gap, 3), 255, np.uint8))
        parts.append(np.pad(v[:t], ((0, 0), (0, h - v.shape[1]), (0, 0), (0, 0))))
    return np.concatenate(parts, axis=2)
