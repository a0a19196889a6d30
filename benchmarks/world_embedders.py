"""Retrieval precision@K in the procedural world for avg_pool, latent_ae, and latent_ae trained
with the Window Temporal Delta Loss, all trained on latents collected from the shipped backbone.

Steps (each through the CLI, as a user runs them): ``lrag collect-latents`` on world walk paths,
``lrag train-embedder`` twice (reconstruction only; reconstruction + WTD + smoothing), then
``lrag run`` on revisit paths with each embedder (native and retrieval on the same noise), and a
markdown table of precision@K and PSNR.

    python benchmarks/world_embedders.py --work runs/world-embedders [--steps 300]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

# A narrow autoencoder (the public one is [64, 128, 256] -> 1024), so that it trains on a CPU.
AE = {"in_channels": 3, "spatial_h": 64, "spatial_w": 64, "latent_dim": 128,
      "hidden_dims": [16, 32, 64]}
LOSSES = {
    "latent_ae (reconstruction)": [{"name": "reconstruction", "weight": 1.0}],
    "latent_ae + WTD": [{"name": "reconstruction", "weight": 1.0},
                        {"name": "window_temporal_delta",
                         "weight": 1.0, "params": {"margin": 0.85, "window": 3}},
                        {"name": "trajectory_smoothing", "weight": 1.0}],
}


def lrag(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "lrag_framework", *args], check=True)


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--worlds", type=int, default=3)
    parser.add_argument("--weights", default="builtin-contiguous",
                        help="the tiny backbone's weights (docs/results.md measured the default)")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    tiny = {"name": "tiny", "params": {"weights": args.weights}}
    corpus = {"run": {"name": "corpus", "backbone": tiny,
                      "retrieval": {"enabled": False},
                      "generation": {"num_frames": 48, "seed": 0, "batch_size": 8},
                      "prefix": {"source": "reference", "frames": 12},
                      "conditionings": [{"world": 2_000_001 + i, "path": "walk"}
                                        for i in range(args.videos)]},
              "out_dir": str(work / "corpus"), "shard_size": 8}
    lrag("collect-latents", str(write(work / "corpus.yaml", corpus)))
    embedders = {"avg_pool": {"name": "avg_pool", "params": {}}}
    for i, (name, losses) in enumerate(LOSSES.items()):
        run_dir = work / f"ae{i}"
        if not (run_dir / "checkpoints" / "best").exists():
            cfg = {"corpus": str(work / "corpus"), "run_dir": str(run_dir),
                   "embedder": {"name": "latent_ae", "params": AE}, "losses": losses,
                   "seq_len": 8, "batch_size": 16, "steps": args.steps, "lr": 3e-4,
                   "eval_every": max(1, args.steps // 3)}
            lrag("train-embedder", str(write(work / f"ae{i}.yaml", cfg)))
        weights = str(run_dir / "checkpoints" / "best")
        embedders[name] = {"name": "latent_ae", "params": {**AE, "weights": weights}}
    from lrag_framework.plugins import load_plugins
    from world_results import ground_truth_precision

    registry = load_plugins()
    print("| embedder | precision@K, generated | precision@K, ground truth (chance) "
          "| PSNR retrieval | PSNR native | PSNR revisits (retrieval) |")
    print("|---|---|---|---|---|---|")
    for name, embedder in embedders.items():
        cfg = {"name": "emb", "backbone": tiny, "embedder": embedder,
               "retrieval": {"k": 3, "recency": 5, "placement": "fill"},
               "generation": {"num_frames": 204, "seed": 0, "batch_size": args.worlds},
               "conditionings": [{"world": 1_000_001 + i, "path": "revisit"}
                                 for i in range(args.worlds)],
               "prefix": {"source": "reference", "frames": 12}, "compare": True,
               "output": {"root": str(work / "runs"), "video": False}, "device": "cpu"}
        lrag("run", str(write(work / "run.yaml", cfg)))
        latest = max((work / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
        m = json.loads((latest / "metrics.json").read_text())
        r, n = m["retrieval"], m["native"]
        gt = ground_truth_precision([1_000_001 + i for i in range(args.worlds)], 204,
                                    registry.build("embedder", embedder["name"],
                                                   embedder["params"]))
        gt_prec, chance = np.mean([p for _, p, _ in gt]), np.mean([c for _, _, c in gt])
        print(f"| {name} | {r['precision_at_k']:.3f} | {gt_prec:.3f} ({chance:.3f}) | "
              f"{r['mean_psnr']:.2f} | {n['mean_psnr']:.2f} | {r['mean_psnr_revisits']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
