"""Evaluation of a run against ground truth, and its plots.

With reference frames (``Backbone.reference``): PSNR per frame against the ground truth (on
pixels in [-1, 1], peak-to-peak 2) and its mean over the generated frames, over *revisit* frames
(frames that show a place last seen outside the attention window) and over *loop-closure* frames
(generated frames whose block has an eligible frame showing its place: where retrieval can bring
a place back); drift (least-squares slope in dB per 100 frames); retrieval precision@K (the
fraction of retrieved frames that show the same place as the block's first ground-truth frame),
the *precision ceiling* (precision@K of a perfect retriever under the same eligibility) and the
precision as a fraction of it; with both modes, the paired gain of retrieval over native on
loop-closure frames. Without reference frames only the retrieval map is drawn.
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


def _mean(values: Tensor) -> float | None:
    return float(values.mean()) if values.numel() else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def evaluate(pixels: dict[str, Tensor], logs: dict[str, list], references: list, g: Geometry,
             first_generated: int) -> dict | None:
    """Metrics per mode from decoded pixels [S, T, 3, h, w]; None without references.

    Keys per mode: ``psnr`` (per stream and frame), ``mean_psnr`` (generated frames),
    ``mean_psnr_revisits``, ``mean_psnr_loop_closure``, ``loop_closure_fraction`` (of generated
    frames), ``drift_db_per_100_frames``, ``precision_at_k``, ``precision_ceiling`` (same in
    both modes: it depends on the path and the geometry only), ``precision_of_ceiling``; in the
    retrieval mode beside a native one, ``gain_loop_closure_db`` and ``gain_db`` (retrieval minus
    native, paired on the same streams and noise) and their std over streams."""
    if not references or any(r is None for r in references):
        return None
    t = next(iter(pixels.values())).shape[1]
    same = [r.same_place[:t, :t] if r.same_place is not None else None for r in references]
    rev = torch.stack([revisits(s, g.window) if s is not None else torch.zeros(t, dtype=bool)
                       for s in same])  # [S, T]
    rev[:, :first_generated] = False
    loop = torch.stack([loop_closure_frames(s, g, first_generated) if s is not None
                        else torch.zeros(t, dtype=bool) for s in same])  # [S, T]
    ceilings = [precision_ceiling(s, g, first_generated) for s in same if s is not None]
    ceilings = [c for c in ceilings if c is not None]
    ceiling = float(np.mean(ceilings)) if ceilings else None
    out, scores_of = {}, {}
    for mode, video in pixels.items():
        scores = torch.stack([psnr(v, r.pixels[:v.shape[0]]) for v, r in zip(video, references)])
        scores_of[mode] = scores  # [S, T]
        gen = scores[:, first_generated:]
        steps = torch.arange(first_generated, t, dtype=torch.float64)
        slope = np.polyfit(steps.numpy(), gen.double().mean(0).numpy(), 1)[0] * 100
        precision = precision_at_k(logs.get(mode, []), references)
        out[mode] = {"psnr": [[round(v, 3) for v in row.tolist()] for row in scores],
                     "mean_psnr": float(gen.mean()),
                     "mean_psnr_revisits": _mean(scores[rev]),
                     "mean_psnr_loop_closure": _mean(scores[loop]),
                     "loop_closure_fraction": float(loop[:, first_generated:].float().mean()),
                     "drift_db_per_100_frames": float(slope),
                     "precision_at_k": precision,
                     "precision_ceiling": ceiling,
                     "precision_of_ceiling": _ratio(precision, ceiling)}
    if "native" in scores_of and "retrieval" in scores_of:
        diff = scores_of["retrieval"] - scores_of["native"]  # [S, T], paired
        per_stream = [_mean(d[m]) for d, m in zip(diff, loop)]
        per_stream = torch.tensor([v for v in per_stream if v is not None])
        overall = diff[:, first_generated:].mean(1)
        out["retrieval"].update({
            "gain_loop_closure_db": _mean(per_stream),
            "gain_loop_closure_std_db": float(per_stream.std(unbiased=False))
            if per_stream.numel() else None,
            "gain_db": float(overall.mean()), "gain_std_db": float(overall.std(unbiased=False))})
    return out


def _figure(width: float, height: float, rows: int = 1):
    """A figure on the Agg canvas, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False, sharex=True)[:, 0]
    return fig, axes


MAX_PANELS = 4  # streams drawn one panel each; the rest only enter the metrics
COLOURS = {"native": "tab:blue", "retrieval": "tab:orange"}


def plot_error(metrics: dict, references: list, g: Geometry, first_generated: int,
               path: Path) -> None:
    """PSNR of every generated frame against the ground truth, one panel per stream (at most
    ``MAX_PANELS``), loop-closure frames shaded; the y axis spans the generated frames only (the
    ground-truth prefix would sit near 100 dB)."""
    from matplotlib.patches import Patch

    streams = len(next(iter(metrics.values()))["psnr"])
    panels = min(streams, MAX_PANELS)
    fig, axes = _figure(8, 1.2 + 2.0 * panels, panels)
    t = len(next(iter(metrics.values()))["psnr"][0])
    x = np.arange(first_generated, t)
    for s, ax in enumerate(axes):
        lows, highs = [], []
        same = references[s].same_place
        loop = (loop_closure_frames(same[:t, :t], g, first_generated).numpy()
                if same is not None else np.zeros(t, bool))
        handles = []
        for mode, m in metrics.items():
            curve = np.asarray(m["psnr"][s][first_generated:])
            lows.append(curve.min())
            highs.append(curve.max())
            on_loop = curve[loop[first_generated:]]
            label = f"{mode}: mean {curve.mean():.1f} dB"
            if on_loop.size:
                label += f", loop closure {on_loop.mean():.1f} dB"
            handles += ax.plot(x, curve, lw=1.1, color=COLOURS.get(mode), label=label)
        ax.fill_between(np.arange(t), 0, 1, where=loop, transform=ax.get_xaxis_transform(),
                        color="tab:green", alpha=0.15, lw=0, step="mid")
        handles.append(Patch(color="tab:green", alpha=0.3,
                             label="loop-closure frames (an eligible frame shows this place)"))
        low, high = min(lows), max(highs)
        pad = max(0.5, 0.08 * (high - low))
        ax.set_ylim(low - pad, high + pad)
        ax.set_xlim(first_generated - 0.5, t - 0.5)
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"stream {s}", fontsize=9, loc="left")
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize=7, loc="upper right")
    axes[-1].set_xlabel(f"frame (frames 0-{first_generated - 1}: ground-truth prefix, "
                        "not shown)")
    more = f" (first {panels} of {streams} streams)" if streams > panels else ""
    fig.suptitle("PSNR of generated frames against the ground truth, higher is better" + more,
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_retrieval_heatmap(log: list[dict], num_frames: int, path: Path,
                           references: list | None = None, g: Geometry | None = None) -> None:
    """Per stream (at most ``MAX_PANELS``), blocks (rows) x past frames (columns): the frames
    retrieved for the block, green where they show the block's place and red where they do not
    (with ground truth); in grey the eligible frames (with ``g``), light green where they show
    the block's place (what a perfect retriever would have taken)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    starts = sorted({e["block_start"] for e in log})
    streams = max((len(e["ids"]) for e in log), default=1)
    panels = min(streams, MAX_PANELS)
    fig, axes = _figure(7, 1.0 + 3.2 * panels, panels)
    hit, miss, unknown = (0.1, 0.6, 0.2), (0.85, 0.15, 0.1), (0.2, 0.2, 0.2)
    eligible_colour, missed = (0.9, 0.9, 0.9), (0.75, 0.92, 0.75)
    for s, ax in enumerate(axes):
        ref = references[s] if references else None
        same = ref.same_place if ref is not None else None
        image = np.ones((max(len(starts), 1), num_frames, 3))  # white: not retrieved
        by_start = {e["block_start"]: e for e in log}
        for row, start in enumerate(starts):
            entry = by_start[start]
            if g is not None:
                eligible = g.eligible(start, torch.ones(start, dtype=torch.bool)).numpy()
                image[row, :start][eligible] = eligible_colour
                if same is not None:
                    image[row, :start][eligible & same[start, :start].numpy()] = missed
            for i in entry["ids"][s]:
                image[row, i] = unknown if same is None else (hit if same[start, i] else miss)
        top, bottom = (starts[0], starts[-1]) if starts else (0, 0)
        ax.imshow(image, aspect="auto", interpolation="nearest",
                  extent=(-0.5, num_frames - 0.5, bottom + 0.5, top - 0.5))
        ax.plot([top, bottom], [top, bottom], color="grey", lw=0.8, ls=":")
        handles = [Line2D([], [], color="grey", lw=0.8, ls=":",
                          label="block start (frames right of it do not exist yet)")]
        if same is not None:
            handles = [Patch(color=hit, label="retrieved, same place"),
                       Patch(color=miss, label="retrieved, another place")] + handles
        else:
            handles = [Patch(color=unknown, label="retrieved")] + handles
        if g is not None:
            handles.append(Patch(color=eligible_colour, label="eligible, not retrieved"))
            if same is not None:
                handles.append(Patch(color=missed, label="eligible, same place, not retrieved"))
        ax.legend(handles=handles, fontsize=7, loc="upper right")  # the future: empty
        ax.set_ylabel("block start frame")
        ax.set_title(f"stream {s}", fontsize=9, loc="left")
    axes[-1].set_xlabel("past frame id")
    more = f" (first {panels} of {streams} streams)" if streams > panels else ""
    fig.suptitle("Which past frames each block retrieved" + more, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
