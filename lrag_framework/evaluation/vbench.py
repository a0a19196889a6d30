"""VBench and VBench-Long scores from per-frame features (Vchitect/VBench: ``vbench/
subject_consistency.py``, ``background_consistency.py``, ``aesthetic_quality.py``,
``vbench2_beta_long/utils.py``).

- Consistency of a clip of frames with L2-normalised features ``f_0 .. f_{n-1}``: the mean over
  ``i >= 1`` of ``(max(0, cos(f_i, f_{i-1})) + max(0, cos(f_i, f_0))) / 2``.
- VBench-Long splits a long video into clips of ``fps * seconds`` frames (the last, shorter one
  is extended backwards to full length; a video shorter than one clip is one clip), scores each
  clip as VBench scores a short video and averages the clips: the *in-clip* score. The
  *clip-to-clip* score applies the same consistency to the first frames of the clips.
- Aesthetic quality: the LAION linear head on L2-normalised CLIP ViT-L/14 image embeddings,
  divided by 10, averaged over frames.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def clip_bounds(frames: int, fps: float, seconds: float) -> list[tuple[int, int]]:
    """VBench-Long's clips [start, end) of a video of ``frames`` frames."""
    length = max(1, round(fps * seconds))
    if frames <= length:
        return [(0, frames)]
    full, rest = divmod(frames, length)
    bounds = [(i * length, (i + 1) * length) for i in range(full)]
    if rest:
        bounds.append((frames - length, frames))  # borrows frames from the previous clip
    return bounds


def frame_consistency(features: Tensor) -> Tensor:
    """Per-frame consistency [n] of features [n, D] (NaN for the first frame)."""
    f = F.normalize(features.float(), dim=-1)
    prev = (f[1:] * f[:-1]).sum(-1).clamp(min=0)
    first = (f[1:] * f[:1]).sum(-1).clamp(min=0)
    return torch.cat([torch.full((1,), math.nan), (prev + first) / 2])


def consistency(features: Tensor) -> float | None:
    """VBench consistency of one clip (None for a single frame)."""
    if features.shape[0] < 2:
        return None
    return float(frame_consistency(features)[1:].mean())


def long_consistency(features: Tensor, fps: float, seconds: float) -> dict:
    """VBench-Long in-clip consistency of one video's features [T, D]: per clip, their mean,
    and the per-frame values (each frame from the first clip that holds it; NaN at clip starts)."""
    bounds = clip_bounds(features.shape[0], fps, seconds)
    per_frame = torch.full((features.shape[0],), math.nan)
    scores = []
    for start, end in reversed(bounds):  # earlier clips overwrite the overlap
        per_frame[start:end] = frame_consistency(features[start:end])
        scores.append(consistency(features[start:end]))
    scores.reverse()
    valid = [s for s in scores if s is not None]
    return {"value": sum(valid) / len(valid) if valid else None, "per_clip": scores,
            "clip_starts": [s for s, _ in bounds], "per_frame": per_frame}


def clip_to_clip(features: Tensor, fps: float, seconds: float) -> dict:
    """VBench-Long's clip-to-clip consistency: over the first frame of every clip (None with
    a single clip, which VBench-Long skips)."""
    starts = [s for s, _ in clip_bounds(features.shape[0], fps, seconds)]
    if len(starts) < 2:
        return {"value": None, "per_clip": [], "clip_starts": starts}
    values = frame_consistency(features[starts])
    return {"value": float(values[1:].mean()), "per_clip": values.tolist(), "clip_starts": starts}


def aesthetic(features: Tensor, head: torch.nn.Linear, fps: float, seconds: float) -> dict:
    """Aesthetic quality of one video's CLIP ViT-L/14 features [T, D]: per frame (the LAION
    score / 10), per clip and their mean."""
    if head.in_features != features.shape[1]:
        raise ValueError(f"aesthetic head takes {head.in_features}-d features, the CLIP model "
                         f"gives {features.shape[1]}-d")
    with torch.no_grad():
        scores = head(F.normalize(features.float(), dim=-1)).squeeze(-1) / 10  # [T]
    bounds = clip_bounds(features.shape[0], fps, seconds)
    per_clip = [float(scores[s:e].mean()) for s, e in bounds]
    return {"value": sum(per_clip) / len(per_clip), "per_clip": per_clip,
            "clip_starts": [s for s, _ in bounds], "per_frame": scores}
