"""Evaluation of a run against ground truth, and its plots.

With reference frames (``Backbone.reference``): PSNR per frame against the ground truth (on
pixels in [-1, 1], peak-to-peak 2), its mean on generated and on *revisit* frames (frames that show
a place last seen outside the attention window), its drift (least-squares slope in dB per 100
frames), and retrieval precision@K: the fraction of retrieved frames that show the same place as
the block's first ground-truth frame. Without reference frames only the retrieval heat map is
drawn.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..generation.plan import Geometry
from ..interfaces import Reference


def psnr(video: Tensor, reference: Tensor) -> Tensor:
    """Per-frame PSNR [T] of pixels [T, 3, h, w] in [-1, 1]."""
    mse = (video.float() - reference.float()).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(4.0 / mse)


def revisits(same_place: Tensor, window: int) -> Tensor:
    """Frames [T] bool that show a place also shown by a frame at least ``window`` frames back."""
    t = same_place.shape[0]
    older = torch.ones(t, t, dtype=torch.bool).tril(-window)  # j <= i - window
    return (same_place & older).any(1)


def generated_block_starts(g: Geometry, num_frames: int, first_generated: int) -> list[int]:
    """Starts of the generated blocks (a prefix of ``first_generated`` frames comes before)."""
    return list(range(first_generated, num_frames, g.block))


def loop_closure_frames(same_place: Tensor, g: Geometry, first_generated: int) -> Tensor:
    """Generated frames [T] bool whose block has at least one eligible frame (``g.eligible``,
    every frame holding K/V) that shows the same place as the block's first ground-truth frame:
    the frames where retrieval can bring a place back."""
    t = same_place.shape[0]
    out = torch.zeros(t, dtype=torch.bool)
    for s in generated_block_starts(g, t, first_generated):
        eligible = g.eligible(s, torch.ones(s, dtype=torch.bool))
        if (same_place[s, :s] & eligible).any():
            out[s:s + g.block] = True
    return out


def precision_ceiling(same_place: Tensor, g: Geometry, first_generated: int) -> float | None:
    """precision@K of a perfect retriever (same-place frames first) under the same eligibility:
    mean over generated blocks with eligible frames of ``min(same, k') / k'``, ``k' = min(K,
    eligible)``. None when K = 0 or no block has eligible frames."""
    values = []
    for s in generated_block_starts(g, same_place.shape[0], first_generated):
        eligible = g.eligible(s, torch.ones(s, dtype=torch.bool))
        k = min(g.k, int(eligible.sum()))
        if k:
            values.append(min(int((same_place[s, :s] & eligible).sum()), k) / k)
    return float(np.mean(values)) if values else None


def precision_at_k(log: list[dict], references: list[Reference | None]) -> float | None:
    """Mean over blocks and streams (with retrieved frames) of the same-place fraction."""
    values = []
    for entry in log:
        for stream, ids in zip(entry["streams"], entry["ids"]):
            ref = references[stream]
            if ids and ref is not None and ref.same_place is not None:
                values.append(float(ref.same_place[entry["block_start"], ids].float().mean()))
    return float(np.mean(values)) if values else None


def evaluate(pixels: dict[str, Tensor], logs: dict[str, list], references: list, window: int,
             first_generated: int) -> dict | None:
    """Metrics per mode from decoded pixels [S, T, 3, h, w]; None without references."""
    if not references or any(r is None for r in references):
        return None
    out = {}
    for mode, video in pixels.items():
        scores = torch.stack([psnr(v, r.pixels[:v.shape[0]]) for v, r in zip(video, references)])
        gen = scores[:, first_generated:]
        t = torch.arange(first_generated, scores.shape[1], dtype=torch.float64)
        slope = np.polyfit(t.numpy(), gen.double().mean(0).numpy(), 1)[0] * 100
        rev = torch.stack([revisits(r.same_place, window)[:scores.shape[1]]
                           if r.same_place is not None else torch.zeros(scores.shape[1], dtype=bool)
                           for r in references])
        rev[:, :first_generated] = False
        out[mode] = {"psnr": [[round(v, 3) for v in row.tolist()] for row in scores],
                     "mean_psnr": float(gen.mean()),
                     "mean_psnr_revisits": float(scores[rev].mean()) if rev.any() else None,
                     "drift_db_per_100_frames": float(slope),
                     "precision_at_k": precision_at_k(logs.get(mode, []), references)}
    return out


def plot_error(metrics: dict, references: list, window: int, first_generated: int,
               path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for mode, m in metrics.items():
        curve = np.mean(m["psnr"], axis=0)
        ax.plot(curve, label=f"{mode} (mean {m['mean_psnr']:.2f} dB)", lw=1.2)
    if references[0].same_place is not None:
        rev = revisits(references[0].same_place, window).numpy()
        ax.fill_between(np.arange(len(rev)), 0, 1, where=rev, transform=ax.get_xaxis_transform(),
                        color="tab:green", alpha=0.12, lw=0, label="revisit (stream 0)")
    ax.axvline(first_generated - 0.5, color="grey", ls=":", lw=1, label="end of prefix")
    ax.set(xlabel="latent frame", ylabel="PSNR vs ground truth (dB)",
           title="error against the ground-truth frame")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_retrieval_heatmap(log: list[dict], num_frames: int, path: Path) -> None:
    """Blocks (rows) x past frames (columns): how many streams retrieved each frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts = sorted({e["block_start"] for e in log})
    grid = np.zeros((max(len(starts), 1), num_frames))
    row_of = {s: i for i, s in enumerate(starts)}
    for entry in log:
        for ids in entry["ids"]:
            grid[row_of[entry["block_start"]], ids] += 1
    fig, ax = plt.subplots(figsize=(6, 5))
    extent = (-0.5, num_frames - 0.5, starts[-1] if starts else 0, starts[0] if starts else 0)
    im = ax.imshow(grid, aspect="auto", cmap="magma", interpolation="nearest", extent=extent)
    ax.plot([0, num_frames], [0, num_frames], color="white", lw=0.5, ls=":")
    ax.set(xlabel="retrieved frame id", ylabel="block start frame",
           title="which past frames were retrieved")
    fig.colorbar(im, ax=ax, label="streams")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
