"""Training and embedding throughput of ``latent_ae`` at the public sizes; prints a markdown table.

One training step = forward of ``batch x seq_len`` frames [16, 60, 104] (Wan latents), the default
losses (reconstruction + window_temporal_delta + trajectory_smoothing), backward, gradient
clipping and an AdamW step, exactly as ``lrag train-embedder`` runs it (``compute_losses``), on
synthetic latents already on the device (data loading is not timed). Rows: float32 and bf16
autocast. End-to-end rows run ``train_embedder`` itself on a synthetic corpus written to a temp
dir (float32 and bfloat16 shards): chunk loading from the memory-mapped shards, host-to-device
copies, logging and the final checkpoint included. Embedding rows time ``embed`` (encoder + L2
norm, no grad) for a block of 3 frames (what the engine embeds per block and stream) and for 1024
frames.

    python benchmarks/embedder_train.py            # CUDA, public sizes (batch 128 x 8 frames)
    python benchmarks/embedder_train.py --quick    # CPU, a tiny batch, seconds
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from lrag_framework.training.corpus import video_key, write_shard
from lrag_framework.plugins import load_plugins
from lrag_framework.training.trainer import (
    compute_losses,
    default_losses,
    load_train_config,
    train_embedder,
)
from timing import median_time


def end_to_end(device, batch: int, seq: int, videos: int, frames: int, steps: int,
               dtype: torch.dtype) -> float:
    """Median chunks/s that ``train_embedder`` logs (first log row, the warm-up, left out)."""
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        for shard in range(0, videos, 8):
            keys = [video_key(i) for i in range(shard, min(shard + 8, videos))]
            data = {k: torch.randn(frames, 16, 60, 104, generator=g).to(dtype) for k in keys}
            write_shard(corpus / f"shard_{shard // 8:05d}.safetensors", data,
                        [{"key": k, "frames": frames} for k in keys])
        cfg = load_train_config({"corpus": str(corpus), "run_dir": str(Path(tmp) / "run"),
                                 "batch_size": batch, "seq_len": seq, "steps": steps,
                                 "eval_every": steps, "log_every": max(1, steps // 5),
                                 "val_fraction": 0, "device": str(device)})
        train_embedder(cfg)
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").open()]
    return statistics.median(r["samples_per_s"] for r in rows[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU, batch 2 x 4 frames")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    device = torch.device("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    batch, seq, repeats = (2, 4, 2) if args.quick else (args.batch, args.seq_len, args.repeats)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    registry = load_plugins()
    embedder = registry.build("embedder", "latent_ae", {}).to(device)
    model = embedder.model
    losses = [registry.build("loss", c.name, c.params) for c in default_losses()]
    labels = [c.name for c in default_losses()]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-4)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, seq, 16, 60, 104, device=device, generator=g)  # [B, S, C, H, W]

    def step(amp: bool):
        total, _ = compute_losses(model, losses, labels, x, amp)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    print(f"latent_ae {params / 1e6:.1f} M params, frames [16, 60, 104], {device} ({name}), "
          f"torch {torch.__version__}\n")
    print("| run | batch | step / call ms | chunks/s | frames/s | peak GiB |")
    print("|---|---|---|---|---|---|")
    modes = [("train float32", False)] + ([("train bf16 autocast", True)] if cuda else [])
    for label, amp in modes:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t = median_time(lambda amp=amp: step(amp), repeats, sync, 1 if args.quick else 3)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
        print(f"| {label} | {batch} x {seq} | {t * 1e3:.1f} | {batch / t:.1f} | "
              f"{batch * seq / t:.0f} | {peak:.1f} |")
    videos, frames, steps = (4, 12, 6) if args.quick else (64, 24, 30)
    for dtype in (torch.float32, torch.bfloat16):
        rate = end_to_end(device, batch, seq, videos, frames, steps, dtype)
        print(f"| train-embedder end to end, {str(dtype)[6:]} shards | {batch} x {seq} | "
              f"{batch / rate * 1e3:.1f} | {rate:.1f} | {rate * seq:.0f} | - |")
    model.eval()
    for n in (3, 1024 if not args.quick else 16):
        frames = x.flatten(0, 1)[:n] if n <= batch * seq else torch.randn(
            n, 16, 60, 104, device=device, generator=g)
        t = median_time(lambda frames=frames: embedder.embed(frames), repeats * 3, sync, 3)
        print(f"| embed float32 | {n} frames | {t * 1e3:.2f} | - | {n / t:.0f} | - |")


if __name__ == "__main__":
    main()
