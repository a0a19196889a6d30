"""``eval/metrics.png``: each metric over time (mean over streams), native and retrieval in the
same panel; the gap-similarity curve over the gap. Drawn on a ``matplotlib.figure.Figure``
(no pyplot, no backend switch: no global state changes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CLIP_METRICS = ("subject_consistency", "background_consistency", "aesthetic_quality",
                "subject_consistency_clip2clip", "background_consistency_clip2clip")


def _panels(result: dict) -> list[str]:
    ran = set(result["metrics_ran"])
    return [m for m in ("psnr", *CLIP_METRICS, "gap_similarity") if m in ran]


def _mean_rows(rows: list[list[float]]) -> np.ndarray:
    n = min(len(r) for r in rows)
    return np.nanmean(np.array([r[:n] for r in rows], dtype=float), axis=0)


def plot_metrics(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    from ..files import write_figure

    panels = _panels(result)
    if not panels:
        return
    fig = Figure(figsize=(8, 2.6 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    fps = result["fps"]
    for ax, metric in zip(axes, panels):
        for mode, metrics in result["modes"].items():
            m = metrics.get(metric)
            if m is None:
                continue
            if metric == "psnr":  # generated frames only (the prefix is the truth itself)
                first = result["first_generated"]
                curve = _mean_rows([s["per_frame"] for s in m["streams"]])
                x = np.arange(first, len(curve))
                ax.plot(x, curve[first:], lw=1.1, label=f"{mode} (loop closure "
                        f"{_fmt(m['value'])} dB)")
                ax.set(xlabel="latent frame", ylabel="PSNR vs truth (dB)")
                if mode == next(iter(result["modes"])):
                    lc = np.zeros(len(curve), dtype=bool)
                    lc[m["streams"][0]["loop_closure_frames"]] = True
                    ax.fill_between(np.arange(len(curve)), 0, 1, where=lc, color="tab:green",
                                    alpha=0.12, lw=0, transform=ax.get_xaxis_transform(),
                                    label="loop-closure frames (stream 0)")
            elif metric == "gap_similarity":
                gaps = [g for g, v in m["value"].items() if v is not None]
                ax.plot([int(g) for g in gaps], [m["value"][g] for g in gaps], marker="o",
                        label=mode)
                ax.set(xlabel="gap (latent frames)", ylabel="latent cosine", xscale="log",
                       xticks=[int(g) for g in gaps], xticklabels=[str(g) for g in gaps])
                ax.minorticks_off()
            else:
                streams = [s for s in m["streams"] if s["per_clip"]]
                if not streams:
                    continue
                starts = np.array(streams[0]["clip_starts"][:len(streams[0]["per_clip"])])
                values = _mean_rows([[np.nan if v is None else v for v in s["per_clip"]]
                                     for s in streams])
                ax.plot(starts[:len(values)] / fps, values, marker=".",
                        label=f"{mode} ({_fmt(m['value'])})")
                ax.set(xlabel="clip start (s)", ylabel=metric.replace("_", " "))
        ax.set_title(metric.replace("_", " "), fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(result["run"], fontsize=10)
    fig.tight_layout()
    write_figure(fig, path, dpi=110)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"
