"""Suite throughput under torchrun: the same per-GPU load on 1, 2, 4, ... processes.

    python benchmarks/suite_scaling.py --procs 1 2 4 --config CONFIG --prompts FILE
    python benchmarks/suite_scaling.py --procs 1 2 --tiny     # CPU (gloo): a smoke check

For N processes the suite is the first ``--items-per-proc x N`` items of ``--prompts`` (default:
world camera paths of the built-in default backbone). Each run is a fresh ``torchrun
--nproc-per-node N -m lrag_framework run ...``; setup (building, warm-up, compilation) is
reported apart from generation, which is the slowest rank's generate + decode + write time.
Prints one markdown table: videos, setup s, warm-up s, generate s, frames/s, speed-up over the
first row per process, and efficiency (speed-up / (N / N0)).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

TINY = ["backbone.params={height: 64, width: 64, patch: 8, dim: 32, layers: 2, heads: 2, "
        "weights: null}", "prefix.frames=6", "device=cpu"]


def suite_file(folder: Path, prompts: str | None, n: int) -> Path:
    if prompts:
        from lrag_framework.suites import read_entries

        entries = read_entries(Path(prompts))
        if len(entries) < n:
            sys.exit(f"{prompts} holds {len(entries)} items; {n} are needed")
        entries = entries[:n]
    else:
        entries = [{"conditioning": {"world": 1000001 + i, "path": "revisit"}} for i in range(n)]
    path = folder / f"suite_{n}.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--config", default=None, help="run config (default: the built-in)")
    parser.add_argument("--prompts", default=None, help="suite file to take the items from")
    parser.add_argument("--items-per-proc", type=int, default=4)
    parser.add_argument("--frames", type=int, default=48, help="latent frames per video")
    parser.add_argument("--tiny", action="store_true", help="small tiny backbone on the CPU")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    extra = (TINY if args.tiny else []) + [f"generation.num_frames={args.frames}",
                                           "generation.batch_size=1", "output.video=false",
                                           "compare=false"] + args.set
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else "cpu"
    print(f"# suite_scaling: {gpu}, torch {torch.__version__}, {platform.python_version()}, "
          f"{args.items_per_proc} items per process, {args.frames} latent frames, batch 1\n")
    print("| processes | videos | setup s (max) | warm-up s (max) | generate s (slowest) | "
          "frames/s | speed-up | efficiency |")
    print("|" + "---|" * 8)
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in args.procs:
            suite = suite_file(tmp, args.prompts, n * args.items_per_proc)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(n), "-m", "lrag_framework", "run",
                   *([args.config] if args.config else []), "--prompts", str(suite),
                   "--set", f"output.root={tmp / 'runs'}", "--set", f"output.name=n{n}",
                   *(x for s in extra for x in ("--set", s))]
            done = subprocess.run(cmd, capture_output=True, text=True,
                                  env=os.environ | {"OMP_NUM_THREADS": "1"} if args.tiny
                                  else os.environ)
            if done.returncode != 0:
                sys.exit(f"{n} processes failed:\n{done.stderr[-3000:]}")
            s = json.loads((tmp / "runs" / f"n{n}" / "summary.json").read_text())
            fps = s["frames_per_second"]
            base = base or (n, fps)
            speed = fps / base[1]
            print(f"| {n} | {s['ok']} | {max(r['setup_seconds'] for r in s['ranks']):.2f} | "
                  f"{max(r['warm_up_seconds'] for r in s['ranks']):.2f} | "
                  f"{max(r['generate_seconds'] for r in s['ranks']):.2f} | {fps:.1f} | "
                  f"{speed:.2f} | {speed / (n / base[0]):.2f} |", flush=True)


if __name__ == "__main__":
    main()
