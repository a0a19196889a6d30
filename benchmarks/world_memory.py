"""What a generator can know, and whether it shows a place again as it showed it before.

The PSNR targets of docs/results.md compare generated frames with the ground truth. On a revisit
path most of what the camera sees after the 12 ground-truth prefix frames was never in view of
them: no generator can know it, it can only guess. And on the way back, what retrieval brings
back is the generator's own guess from the way out. This script separates the two. For held-out
worlds (revisit paths, 12 prefix frames, 192 generated) and a generator (``--weights``), native
and retrieval (the default job's key: ``pose``, fill, K = 3) on the same noise:

- **seen**: the share of generated pixels whose panorama place was in view of a prefix frame
  (moving subjects aside, those are the only pixels a perfect memory could get right);
- PSNR against the truth on **seen** and on **unseen** pixels, over the first 48 (4x) and all 192
  (16x) generated frames, and the **memory ceiling**: the PSNR the generator would reach with
  every seen pixel exact and its unseen pixels as they are (what remembering the prefix
  perfectly could buy at most);
- **consistency** on loop-closure frames: PSNR between a generated frame and the generator's own
  earlier frame of the same place (the eligible frame of its block that overlaps it most),
  compared on the panorama pixels both show, background only (pixels where the two truth frames
  agree). This is "show it as it was": a perfect copy of the earlier pass gives 106 dB (the
  cap of a zero error).

    python benchmarks/world_memory.py [--worlds 5] [--weights builtin] [--device cpu]
"""
from __future__ import annotations

import argparse
import math
import tempfile

import numpy as np
import torch
from lrag_adapters.world import SAME_PLACE_OVERLAP, make_clip, overlap_matrix

import lrag_framework
from lrag_framework.generation.plan import Geometry
from lrag_framework.outputs.report import loop_closure_frames

PREFIX, GENERATED, WINDOW = 12, 192, 12
GEOMETRY = Geometry(block=3, window=WINDOW, sink=1, k=3, recency=5, placement="fill")


def generate(weights: str, worlds: list[int], device: str, params: dict | None = None
             ) -> dict[str, np.ndarray]:
    """Generated frames per mode [S, T, 3, F, F] of the default job's retrieval configuration."""
    cfg = {"name": "world_memory",
           "backbone": {"name": "tiny", "params": {"weights": weights, **(params or {})}},
           "embedder": {"name": "pose"},
           "retrieval": {"enabled": True, "k": GEOMETRY.k, "recency": GEOMETRY.recency,
                         "placement": "fill", "retrieved_position": "zero"},
           "generation": {"num_frames": PREFIX + GENERATED, "seed": 0,
                          "batch_size": len(worlds)},
           "conditionings": [{"world": w, "path": "revisit"} for w in worlds],
           "prefix": {"source": "reference", "frames": PREFIX}, "compare": True,
           "output": {"root": tempfile.mkdtemp(prefix="world_memory_"), "video": False,
                      "save_latents": False},
           "device": device, "dtype": "float32"}
    result = lrag_framework.run(cfg)
    return {mode: result.latents[mode].numpy() for mode in ("native", "retrieval")}


def places(truths, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Panorama row and column of every frame pixel: [T, F, 1] and [T, 1, F] (wrapped)."""
    x = np.array([t.x for t in truths])[:, None, None]
    y = np.array([t.y for t in truths])[:, None, None]
    width = truths[0].width
    return y + np.arange(frame)[None, :, None], (x + np.arange(frame)[None, None, :]) % width


def psnr(sq_err_sum: float, count: int) -> float:
    return 10 * math.log10(4.0 / max(sq_err_sum / max(count, 1), 1e-10))  # pixels in [-1, 1]


def loop_frames(overlaps: np.ndarray) -> np.ndarray:
    """The loop-closure frames (docs/results.md) of a path, as frame indices, from the overlap
    matrix of its frames."""
    same = torch.from_numpy(overlaps >= SAME_PLACE_OVERLAP)
    return np.flatnonzero(loop_closure_frames(same, GEOMETRY, PREFIX).numpy())


def seen_split(gen: np.ndarray, truth: np.ndarray, truths, which: np.ndarray) -> tuple:
    """(share seen, PSNR seen, PSNR unseen, PSNR all, memory ceiling, PSNR of the row-mean guess
    on unseen pixels) over the generated frames ``which``, each from the squared error
    pooled over those pixels. The row-mean guess paints an unseen pixel with the mean colour of
    the seen pixels of its panorama row (a prior that needs no model)."""
    frame = truth.shape[-1]
    rows, cols = places(truths, frame)
    seen = np.zeros((int(rows.max()) + 1, truths[0].width), bool)
    seen[rows[:PREFIX].repeat(frame, 2), cols[:PREFIX].repeat(frame, 1)] = True
    mask = seen[rows[which].repeat(frame, 2), cols[which].repeat(frame, 1)]
    err = ((gen[which] - truth[which]) ** 2).sum(1)  # [T, F, F], over RGB
    n_seen, n_all = int(mask.sum()), mask.size
    seen_sse, unseen_sse = float(err[mask].sum()) / 3, float(err[~mask].sum()) / 3
    prefix_rows = rows[:PREFIX].repeat(frame, 2).ravel()
    colours = truth[:PREFIX].transpose(0, 2, 3, 1).reshape(-1, 3)
    row_mean = np.stack([np.bincount(prefix_rows, colours[:, c], seen.shape[0])
                         for c in range(3)], 1) / np.maximum(
        np.bincount(prefix_rows, minlength=seen.shape[0]), 1)[:, None]  # [Hp, 3]
    guess = row_mean[rows[which].repeat(frame, 2)].transpose(0, 3, 1, 2)  # [T, 3, F, F]
    guess_sse = float(((guess - truth[which]) ** 2).sum(1)[~mask].sum()) / 3
    return (n_seen / n_all, psnr(seen_sse, n_seen), psnr(unseen_sse, n_all - n_seen),
            psnr(seen_sse + unseen_sse, n_all), psnr(unseen_sse, n_all),
            psnr(guess_sse, n_all - n_seen))


def consistency(gen: np.ndarray, truth: np.ndarray, truths, ov: np.ndarray,
                loop: np.ndarray) -> tuple[float, int]:
    """(PSNR of generated frames against their own earlier frame of the same place, frames
    compared) over the loop-closure frames ``loop``, on the background pixels both frames show;
    ``ov``: the overlap matrix of the path's frames."""
    frame = truth.shape[-1]
    rows, cols = places(truths, frame)
    sse = n = frames = 0
    for t in loop:
        start = PREFIX + (t - PREFIX) // GEOMETRY.block * GEOMETRY.block
        eligible = GEOMETRY.eligible(start, torch.ones(start, dtype=torch.bool)).numpy()
        candidates = np.flatnonzero(eligible & (ov[t, :start] >= SAME_PLACE_OVERLAP))
        candidates = candidates[candidates >= PREFIX]  # its own frames, not the prefix's
        if len(candidates) == 0:
            continue
        newest_first = candidates[::-1]  # the most overlap; ties go to the newer frame
        earlier = newest_first[int(np.argmax(ov[t, newest_first]))]
        i = rows[t].repeat(frame, 1) - truths[earlier].y  # rows of frame t in the earlier one
        j = (cols[t].repeat(frame, 0) - truths[earlier].x) % truths[0].width
        inside = (i >= 0) & (i < frame) & (j < frame)
        ii, jj = np.clip(i, 0, frame - 1), np.clip(j, 0, frame - 1)
        background = inside & (truth[t] == truth[earlier][:, ii, jj]).all(0)
        diff = gen[t] - gen[earlier][:, ii, jj]  # [3, F, F]
        sse += float((diff ** 2).sum(0)[background].sum()) / 3
        n += int(background.sum())
        frames += 1
    return psnr(sse, n), frames


def memory_table(weights: str, worlds: list[int], device: str = "cpu",
                 params: dict | None = None) -> None:
    """Print the table of one generator (also run by ``benchmarks/world_results.py``)."""
    clips = [make_clip(w, PREFIX + GENERATED, "revisit") for w in worlds]
    overlaps = [overlap_matrix(c[2], c[2]) for c in clips]
    spans = [{"4x (48)": np.arange(PREFIX, PREFIX + 48),
              "16x (192)": np.arange(PREFIX, PREFIX + GENERATED),
              "loop closure (16x)": loop_frames(ov)} for ov in overlaps]  # per clip
    runs = generate(weights, worlds, device, params)
    print(f"# world_memory: weights {weights}, worlds {worlds[0]}-{worlds[-1]}, revisit "
          f"paths, {PREFIX} prefix + {GENERATED} generated frames; retrieval: pose, fill, K=3\n")
    print("| mode | frames | seen share | PSNR seen | PSNR unseen (row-mean guess) | PSNR all "
          "(pooled) | memory ceiling | consistency on loop closure (frames) |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, gen in runs.items():
        for label in spans[0]:
            rows = [seen_split(gen[s], clip[0], clip[2], spans[s][label])
                    for s, clip in enumerate(clips)]
            share, p_seen, p_unseen, overall, ceiling, p_guess = np.array(rows).mean(0)
            cons = ""
            if label.startswith("loop"):
                values = np.array([consistency(gen[s], c[0], c[2], overlaps[s], spans[s][label])
                                   for s, c in enumerate(clips)])
                cons = (f"{values[:, 0].mean():.2f} ± {values[:, 0].std():.2f} "
                        f"({int(values[:, 1].sum())})")
            print(f"| {mode} | {label} | {share:.2f} | {p_seen:.2f} | {p_unseen:.2f} "
                  f"({p_guess:.2f}) | "
                  f"{overall:.2f} | {ceiling:.2f} | {cons or '-'} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=5)
    parser.add_argument("--weights", default="builtin")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    memory_table(args.weights, list(range(1000001, 1000001 + args.worlds)), args.device)


if __name__ == "__main__":
    main()
