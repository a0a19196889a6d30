"""A strip of frames of a world run: truth | native | retrieval at chosen frames (the README's).

Reads a compare-mode run directory of the tiny backbone (``lrag run`` with no config writes one),
renders the ground truth of a stream's conditioning, and writes one PNG:

    python benchmarks/world_strip.py RUN_DIR --stream 0 --frames 11 14 60 118 124 130 \
        --out docs/images/default_compare_strip.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml

from lrag_framework.files import read_tensors, write_figure


def strip(run_dir: Path, stream: int, frames: list[int], out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lrag_adapters.world import make_clip

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    videos = {mode: read_tensors(run_dir / mode / "latents.safetensors")["latents"][stream]
              for mode in ("native", "retrieval")}  # [T, 3, H, W] in [-1, 1]
    item = cfg["conditionings"][stream]
    truth = torch.from_numpy(make_clip(int(item["world"]), len(videos["native"]),
                                       item.get("path", "revisit"))[0])
    fig = Figure(figsize=(2.9 * len(frames), 1.45))
    FigureCanvasAgg(fig)
    for i, f in enumerate(frames):
        row = np.concatenate([np.asarray(v[f].permute(1, 2, 0).clamp(-1, 1)) * 0.5 + 0.5
                              for v in (truth, videos["native"], videos["retrieval"])], axis=1)
        ax = fig.add_subplot(1, len(frames), i + 1)
        ax.imshow(row, interpolation="nearest")
        ax.set_title(f"frame {f}: truth | native | retrieval", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    write_figure(fig, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--stream", type=int, default=0)
    parser.add_argument("--frames", type=int, nargs="+", default=[11, 14, 60, 118, 124, 130])
    parser.add_argument("--out", type=Path, default=Path("strip.png"))
    args = parser.parse_args()
    strip(args.run_dir, args.stream, args.frames, args.out)


if __name__ == "__main__":
    main()
