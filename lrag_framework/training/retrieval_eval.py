"""Retrieval quality of embedders on held-out videos, and the training plots.

Own-video top-1: every frame of every video is a query; the candidates are all other frames of
all videos except the frames within ``exclusion`` frames of the query (either side) in its own
video. The score is the fraction of queries whose top-1 (cosine) candidate comes from the query's
own video: an embedder that recognises the same scene across time scores high, one that only
matches generic appearance scores near the share of other videos' frames.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def own_video_top1(descriptors: list[Tensor], exclusion: int = 5, chunk: int = 1024) -> float:
    """``descriptors``: one [F_v, D] tensor per video (same device). Fraction of own-video top-1.

    Queries with no candidate at all (a single short video) are not counted.
    """
    if exclusion < 0:
        raise ValueError(f"exclusion radius must be >= 0, got {exclusion}")
    if not descriptors:
        raise ValueError("own_video_top1 needs at least one video")
    x = torch.nn.functional.normalize(torch.cat(descriptors).float(), dim=-1)  # [N, D]
    device = x.device
    video = torch.cat([torch.full((len(d),), i, device=device)
                       for i, d in enumerate(descriptors)])  # [N]
    frame = torch.cat([torch.arange(len(d), device=device) for d in descriptors])  # [N]
    hits = counted = 0
    for q in range(0, len(x), chunk):
        sl = slice(q, q + chunk)
        scores = x[sl] @ x.T  # [n, N]
        near = (video[sl, None] == video[None]) & \
            ((frame[sl, None] - frame[None]).abs() <= exclusion)  # [n, N]
        scores = scores.masked_fill(near, float("-inf"))
        best = scores.argmax(dim=1)  # [n]
        valid = torch.isfinite(scores.max(dim=1).values)
        hits += int(((video[best] == video[sl]) & valid).sum())
        counted += int(valid.sum())
    if counted == 0:
        raise ValueError(f"no query has a candidate outside the exclusion radius {exclusion}")
    return hits / counted


@torch.no_grad()
def embed_videos(embedder, videos: list[Tensor], device: torch.device | str,
                 batch: int = 256) -> list[Tensor]:
    """Descriptors [F_v, D] of each video [F_v, C, H, W] (frames embedded in batches)."""
    out = []
    for v in videos:
        parts = [embedder.embed(v[i:i + batch].to(device)) for i in range(0, len(v), batch)]
        out.append(torch.cat(parts).float())
    return out


def compare_embedders(embedders: dict[str, object], videos: list[Tensor],
                      device: torch.device | str = "cpu", exclusion: int = 5) -> dict:
    """{label: own-video top-1} for each embedder on the same videos (e.g. avg_pool, AE, AE+WTD)."""
    return {"exclusion": exclusion, "videos": len(videos),
            "frames": sum(len(v) for v in videos),
            "own_video_top1": {name: own_video_top1(embed_videos(e, videos, device), exclusion)
                               for name, e in embedders.items()}}


def plot_retrieval(result: dict, path: str | Path) -> None:
    """Bar plot of ``compare_embedders``'s result (written atomically)."""
    from matplotlib.figure import Figure

    from ..files import write_figure

    names, values = zip(*result["own_video_top1"].items())
    fig = Figure(figsize=(1.6 + 1.4 * len(names), 3.2), layout="tight")
    ax = fig.subplots()
    bars = ax.bar(names, values, color="tab:blue")
    ax.bar_label(bars, fmt="%.3f")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("own-video top-1")
    ax.set_title(f"{result['videos']} videos, exclusion radius {result['exclusion']}")
    write_figure(fig, path)


def plot_losses(rows: list[dict], path: str | Path) -> None:
    """Train and validation losses against the step from metrics rows (written atomically)."""
    from matplotlib.figure import Figure

    from ..files import write_figure

    fig = Figure(figsize=(7, 4), layout="tight")
    ax = fig.subplots()
    for split, style in (("train", "-"), ("val", "o--")):
        split_rows = [r for r in rows if r["split"] == split]
        names = [k for k in (split_rows[0]["losses"] if split_rows else {})]
        for name in ["total", *names]:
            ys = [r["total"] if name == "total" else r["losses"][name] for r in split_rows]
            ax.plot([r["step"] for r in split_rows], ys, style, label=f"{split} {name}",
                    lw=2 if name == "total" else 1, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (unweighted terms, weighted total)")
    ax.set_yscale("symlog", linthresh=1e-4)  # terms can be exactly 0
    ax.legend(fontsize=7, ncol=2)
    write_figure(fig, path)
