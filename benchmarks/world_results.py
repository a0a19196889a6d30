"""What retrieval does in the procedural world, measured against ground truth (docs/results.md).

For several worlds (revisit camera paths, 12 ground-truth prefix frames, then 192 generated
frames = 16x the 12-frame training clip) and each configuration, runs native and retrieval on the
same noise and prints markdown tables of:
- PSNR against the ground-truth frame over the first 12 / 48 / 192 generated frames (1x, 4x, 16x
  the training clip; generation is causal, so the first N frames of the long run are the short
  run), mean and standard deviation over worlds, and on revisit frames;
- drift (slope of PSNR, dB per 100 frames);
- retrieval precision@K against ground truth;
- how far retrieval moved the output from the native run (0 would mean retrieved frames are
  ignored by the generator).

    python benchmarks/world_results.py [--worlds 3] [--frames 204]
"""
from __future__ import annotations

import argparse
import tempfile

import numpy as np

import lrag_framework

CONFIGS = {
    "fill, K=3, pos 0 (default)": {"placement": "fill", "k": 3, "retrieved_position": "zero"},
    "fill, K=6, pos 0": {"placement": "fill", "k": 6, "retrieved_position": "zero"},
    "reference, K=6, pos 0 (public)": {"placement": "reference", "k": 6,
                                       "retrieved_position": "zero"},
    "extend, K=3, pos 0": {"placement": "extend", "k": 3, "retrieved_position": "zero"},
    "fill, K=3, before_local": {"placement": "fill", "k": 3,
                                "retrieved_position": "before_local"},
}


def run_one(retrieval: dict, worlds: list[int], frames: int, root: str) -> dict:
    cfg = {"name": "results", "backbone": {"name": "tiny", "params": {"weights": "builtin"}},
           "retrieval": {"enabled": True, "recency": 5, **retrieval},
           "generation": {"num_frames": frames, "seed": 0, "batch_size": len(worlds)},
           "conditionings": [{"world": w, "path": "revisit"} for w in worlds],
           "prefix": {"source": "reference", "frames": 12}, "compare": True,
           "output": {"root": root, "video": False, "save_latents": False}, "device": "cpu"}
    result = lrag_framework.run(cfg)
    import json

    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    diff = float((result.latents["retrieval"] - result.latents["native"]).abs().mean())
    return {"metrics": metrics, "moved": diff}


def psnr_stats(psnr: list[list[float]], first: int, n: int) -> str:
    per_world = [np.mean(row[first:first + n]) for row in psnr]
    return f"{np.mean(per_world):.2f} ± {np.std(per_world):.2f}"


def ground_truth_precision(worlds: list[int], frames: int, embedder=None, k: int = 3
                           ) -> list[tuple[int, float, float]]:
    """Per world: precision@K of ``embedder`` (default avg_pool) when history and query are the
    ground-truth frames themselves (what a perfect generator would give), and the chance level
    (all eligible frames)."""
    import torch

    from lrag_framework.generation.plan import Geometry
    from lrag_framework.plugins import load_plugins

    registry = load_plugins()
    embedder = embedder or registry.build("embedder", "avg_pool", {})
    bb = registry.build("backbone", "tiny", {"weights": None, "dim": 32, "heads": 2, "layers": 1})
    g = Geometry(3, 12, 1, k, 5, "fill")
    rows = []
    for w in worlds:
        ref = bb.reference({"world": w, "path": "revisit"}, frames)
        with torch.no_grad():
            desc = torch.nn.functional.normalize(embedder.embed(ref.latents).float(), dim=-1)
        prec, chance = [], []
        for s in range(12, frames, 3):
            eligible = g.eligible(s, torch.ones(frames, dtype=torch.bool)).nonzero().flatten()
            if len(eligible):
                top = eligible[(desc[eligible] @ desc[s - 1]).topk(min(k, len(eligible))).indices]
                prec.append(ref.same_place[s, top].float().mean().item())
                chance.append(ref.same_place[s, eligible].float().mean().item())
        rows.append((w, float(np.mean(prec)), float(np.mean(chance))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=204)
    args = parser.parse_args()
    worlds = [1_000_001 + i for i in range(args.worlds)]
    root = tempfile.mkdtemp()
    results = {name: run_one(r, worlds, args.frames, root) for name, r in CONFIGS.items()}
    first = 12
    print(f"worlds {worlds}; prefix 12 ground-truth frames; PSNR in dB, mean ± std over worlds\n")
    print("| run | 1x (12) | 4x (48) | 16x (192) | revisits | drift dB/100 | precision@K "
          "| mean abs change vs native |")
    print("|---|---|---|---|---|---|---|---|")
    native = next(iter(results.values()))["metrics"]["native"]
    rows = [("native", native, None)] + [(n, r["metrics"]["retrieval"], r["moved"])
                                         for n, r in results.items()]
    for name, m, moved in rows:
        p = m["precision_at_k"]
        print(f"| {name} | {psnr_stats(m['psnr'], first, 12)} | {psnr_stats(m['psnr'], first, 48)}"
              f" | {psnr_stats(m['psnr'], first, 192)} | {m['mean_psnr_revisits']:.2f} "
              f"| {m['drift_db_per_100_frames']:.2f} | {'-' if p is None else f'{p:.3f}'} "
              f"| {'-' if moved is None else f'{moved:.4f}'} |")
    print("\n| world | avg_pool precision@3 on ground-truth frames | chance |")
    print("|---|---|---|")
    for w, prec, chance in ground_truth_precision(worlds, args.frames):
        print(f"| {w} | {prec:.3f} | {chance:.3f} |")


if __name__ == "__main__":
    main()
