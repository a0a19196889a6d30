"""Weight-free drift measures: similarity at growing frame gaps, PSNR against the truth on the
loop-closure frames (``lrag_framework.outputs.report``), and the first-failure time."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..generation.plan import Geometry
from ..outputs.report import loop_closure_frames, precision_at_k, precision_ceiling, psnr

PSNR_CAP = float(10 * math.log10(4.0 / 1e-10))  # report.psnr on identical frames (MSE clamp)


def latent_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity [n] of frames [n, ...] flattened."""
    return F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1)


def gap_similarity(latents: Tensor, gaps: list[int], first: int) -> dict:
    """Cosine similarity of latent frame pairs ``(t, t + g)`` with ``t >= first`` for each gap
    ``g``, of one stream's latents [T, C, H, W]. Returns per gap the mean (None when no pair
    fits) and the values by later frame ``t + g``."""
    curve, per_frame = {}, {}
    for g in gaps:
        if first + g >= latents.shape[0]:
            curve[g], per_frame[g] = None, []
            continue
        later = torch.arange(first + g, latents.shape[0])
        values = latent_cosine(latents[later], latents[later - g])
        curve[g], per_frame[g] = float(values.mean()), values.tolist()
    return {"curve": curve, "per_frame": per_frame}


def start_similarity(latents: Tensor, first: int) -> Tensor:
    """Cosine similarity [T] of every latent frame to the first generated one (NaN before)."""
    out = torch.full((latents.shape[0],), math.nan)
    if first < latents.shape[0]:
        ref = latents[first:first + 1].expand_as(latents[first:])
        out[first:] = latent_cosine(latents[first:], ref)
    return out


def runs_of(mask: Tensor) -> list[tuple[int, int]]:
    """Contiguous True runs [start, end) of a bool vector."""
    m = np.concatenate([[False], mask.numpy(), [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(m))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def truth_psnr(pixels: list[Tensor], references: list, g: Geometry, first: int,
               log: list[dict]) -> dict:
    """PSNR of decoded streams (pixels [T, 3, h, w] each) against their references: per frame,
    its mean on generated and on loop-closure frames, per loop-closure segment (a contiguous
    run of loop-closure frames), with the run's precision@K and the perfect retriever's."""
    streams, lc_values, gen_values, ceilings = [], [], [], []
    for video, ref in zip(pixels, references):
        t = video.shape[0]
        scores = psnr(video, ref.pixels[:t])
        closure = (loop_closure_frames(ref.same_place[:t, :t], g, first)
                   if ref.same_place is not None else torch.zeros(t, dtype=torch.bool))
        segments = [{"start": a, "end": b, "psnr": float(scores[a:b].mean())}
                    for a, b in runs_of(closure)]
        if ref.same_place is not None and g.k:
            ceilings.append(precision_ceiling(ref.same_place[:t, :t], g, first))
        gen_values.append(scores[first:])
        lc_values.append(scores[closure])
        streams.append({"per_frame": [round(v, 3) for v in scores.tolist()],
                        "loop_closure_frames": torch.nonzero(closure).flatten().tolist(),
                        "segments": segments,
                        "mean_generated": float(scores[first:].mean()) if t > first else None,
                        "mean_loop_closure": float(scores[closure].mean())
                        if closure.any() else None})
    pooled = torch.cat(lc_values)
    gen = torch.cat(gen_values)
    ceilings = [c for c in ceilings if c is not None]
    return {"value": float(pooled.mean()) if len(pooled) else None,
            "mean_generated": float(gen.mean()) if len(gen) else None,
            "loop_closure_count": int(len(pooled)), "cap": PSNR_CAP,
            "precision_at_k": precision_at_k(log, references) if log else None,
            "precision_ceiling": float(np.mean(ceilings)) if ceilings else None,
            "streams": streams}


def first_failure(series: Tensor, start: int, threshold: float,
                  patience: int | None = None) -> int | None:
    """The first index ``t >= start`` whose value is below ``threshold`` and from which no value
    reaches it again for ``patience`` frames (None: to the end). NaN values are not evaluated:
    they neither fail nor recover. None when the measure never fails."""
    x = series.float()
    evaluated = ~torch.isnan(x)
    below = evaluated & (x < threshold)
    above = evaluated & ~below
    n = len(x)
    for t in range(start, n):
        if not below[t]:
            continue
        end = n if patience is None else min(n, t + patience)
        if not above[t:end].any():
            return t
        if patience is None:  # the last recovery bounds every later candidate
            last = int(torch.nonzero(above[t:]).max()) + t
            rest = torch.nonzero(below[last + 1:]).flatten()
            return int(rest[0]) + last + 1 if len(rest) else None
    return None
