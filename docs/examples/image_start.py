"""Start frames with the built-in tiny world backbone: a video from one picture, and the
continuation of an mp4.

    python docs/examples/image_start.py [--out DIR] [--frames N] [--figure PATH]

1. The ground-truth first frame of a world camera path (``Backbone.reference``) is saved as a
   PNG and the video is generated from it: ``prefix: {source: image, path: start.png}``. The
   picture is cover-resized and centre-cropped to the backbone's 64 x 64 frames (already that
   size here), encoded (the identity: the tiny backbone works on pixels) and enters cache and
   history as frame 0; the actions of the world path drive the frames after it.
2. The same run from the ground-truth frame itself (``prefix: {source: reference, frames: 1}``):
   the two differ only by the PNG's 8-bit rounding of frame 0.
3. The first 12 ground-truth frames are written as an h264 mp4 (``StreamingVideoWriter``) and
   continued with ``lrag run CONFIG --video clip.mp4`` (called here through ``cli.main``), and
   for comparison the run from those 12 frames exactly (``source: reference, frames: 12``).
4. A figure (ground truth, the image start and the video continuation: frame 0, then every k-th
   frame) and a table of PSNR against the ground truth.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

import lrag_framework
from lrag_framework.cli import main as lrag
from lrag_framework.outputs.media import StreamingVideoWriter
from lrag_framework.outputs.media import to_uint8_frames
from lrag_framework.plugins import load_plugins
from lrag_framework.outputs.report import psnr

WORLD = {"world": 1000001, "path": "revisit"}  # an evaluation world (docs/results.md)
CLIP = 12  # ground-truth frames in the mp4 that is continued


def run_config(out: Path, name: str, frames: int, prefix: dict | None) -> dict:
    """One video along the world path with the shipped tiny backbone, into ``out/name``."""
    return {"name": name, "backbone": {"name": "tiny", "params": {"weights": "builtin"}},
            "retrieval": {"k": 3, "recency": 5, "placement": "fill"},
            "generation": {"num_frames": frames, "seed": 0, "batch_size": 1},
            "conditionings": [WORLD], "prefix": prefix,
            "output": {"root": str(out), "name": name, "fps": 8, "video_scale": 4},
            "device": "cpu"}


def save_png(pixels: torch.Tensor, path: Path) -> None:
    """Pixels [3, h, w] in [-1, 1] -> an RGB PNG."""
    from PIL import Image

    Image.fromarray(to_uint8_frames(pixels[None])[0]).save(path)


def write_clip(pixels: torch.Tensor, path: Path) -> None:
    """Ground-truth frames [T, 3, h, w] -> an h264 mp4 at the backbone's size."""
    with StreamingVideoWriter(path, fps=8) as writer:
        writer.append(to_uint8_frames(pixels))


def latents_of(run_dir: Path) -> torch.Tensor:
    """The generated latents [T, C, H, W] of a run folder's single stream (pixels, for tiny)."""
    from safetensors.torch import load_file

    return load_file(str(run_dir / "retrieval" / "latents.safetensors"))["latents"][0]


def figure(truth: torch.Tensor, rows: dict[str, tuple[torch.Tensor, int]], step: int,
           path: Path) -> None:
    """Frame 0, then every ``step``-th frame from frame 1 on, of the truth and of each run
    [T, 3, h, w]; given frames (the start of each run) framed in blue, generated ones orange."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [0, *range(1, truth.shape[0], step)]
    all_rows = {"ground truth": (truth, truth.shape[0]), **rows}
    labels = [label.replace(" ", "\n", 1) for label in all_rows]
    fig, axes = plt.subplots(len(all_rows), len(times), figsize=(0.95 * len(times) + 1.2,
                                                                   1.05 * len(all_rows) + 0.3),
                             squeeze=False)
    for r, (label, (video, given)) in enumerate(all_rows.items()):
        frames = to_uint8_frames(video)
        for c, t in enumerate(times):
            ax = axes[r, c]
            ax.imshow(frames[t], interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            if r:
                colour = "tab:blue" if t < given else "tab:orange"
                for side in ax.spines.values():
                    side.set(color=colour, linewidth=2.5)
            if r == 0:
                ax.set_title(f"t = {t}", fontsize=8)
            if c == 0:
                ax.set_ylabel(labels[r], fontsize=8)
    fig.suptitle("blue: given frames, orange: generated", fontsize=8, y=0.995)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/image_start", help="output folder (new)")
    parser.add_argument("--frames", type=int, default=48, help="latent frames per video")
    parser.add_argument("--figure", help="where to write the figure (default: OUT/"
                        "image_start.png)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.frames <= CLIP:
        parser.error(f"--frames must exceed the {CLIP}-frame clip, got {args.frames}")
    if out.exists() and any(out.iterdir()):
        parser.error(f"{out} is not empty: choose another --out")
    out.mkdir(parents=True, exist_ok=True)

    backbone = load_plugins().build("backbone", "tiny", {"weights": "builtin"})
    truth = backbone.reference(WORLD, args.frames).pixels  # [T, 3, 64, 64] in [-1, 1]
    save_png(truth[0], out / "start.png")
    prefixes = {"image_start": {"source": "image", "path": str(out / "start.png")},
                "truth_1": {"source": "reference", "frames": 1},
                f"truth_{CLIP}": {"source": "reference", "frames": CLIP}}
    for name, prefix in prefixes.items():
        lrag_framework.run(run_config(out, name, args.frames, prefix))

    write_clip(truth[:CLIP], out / "clip.mp4")
    cfg = out / "continue.yaml"
    cfg.write_text(yaml.safe_dump(run_config(out, "video_continuation", args.frames, None),
                                  sort_keys=False))
    print(f"$ lrag run {cfg} --video {out / 'clip.mp4'}")
    if lrag(["run", str(cfg), "--video", str(out / "clip.mp4")]):
        return 1

    runs = {  # label: (run folder, given frames)
        "image start": ("image_start", 1), "ground-truth frame 0": ("truth_1", 1),
        "video continuation": ("video_continuation", CLIP),
        f"ground-truth frames 0..{CLIP - 1}": (f"truth_{CLIP}", CLIP)}
    videos = {label: (latents_of(out / name), given) for label, (name, given) in runs.items()}
    path = Path(args.figure) if args.figure else out / "image_start.png"
    figure(truth, {k: videos[k] for k in ("image start", "video continuation")},
           max(1, args.frames // 8), path)

    diff = (videos["image start"][0] - videos["ground-truth frame 0"][0]).abs()  # [T, 3, h, w]
    print(f"\nimage start vs ground-truth frame 0: max |difference| {float(diff[0].max()):.4f} "
          f"at frame 0 (the PNG's 8-bit rounding), {float(diff.max()):.4f} over the video")
    print("PSNR (dB) against the ground truth, mean over frames; the video continuation's given "
          "frames are the h264-decoded clip")
    print(f"{'start':<26}{'given':>6}{'given frames':>14}{'next 3':>8}"
          f"{'frames ' + str(CLIP) + '..' + str(args.frames - 1):>14}")
    for label, (video, given) in videos.items():
        scores = psnr(video, truth)  # [T]
        exact = bool((video[:given] == truth[:given]).all())
        print(f"{label:<26}{given:>6}{'exact' if exact else f'{scores[:given].mean():.2f}':>14}"
              f"{float(scores[given:given + 3].mean()):>8.2f}{float(scores[CLIP:].mean()):>14.2f}")
    print(f"\nvideos: {out}/*/retrieval/stream_000.mp4\nfigure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
