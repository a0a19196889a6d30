"""Retriever latency, add throughput and usearch recall vs history size; prints a markdown table.

For each descriptor dim and history size (frames per stream) it builds every retriever over
``--streams`` streams of video-like descriptors (scenes of slowly drifting vectors), then times:
one bulk add of the whole history per stream (frames/s), the add of a 3-frame block, a search for
one stream (query [1, D]) and for all streams at once (query [S, D]), K = ``--k``, every frame but
the last 20 eligible. usearch recall@K is measured against ``exact`` on 20 query batches.

    python benchmarks/retrievers.py --quick --out docs/bench.md      # CPU, a minute
    python benchmarks/retrievers.py --out retrievers_h100.md         # full; exact on CPU and CUDA

usearch adds a few thousand dim-1024 vectors per second per core: ``--usearch-max`` caps the sizes
it runs at (its threads default to all cores).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
import usearch

from lrag_retrievers.exact import ExactParams
from lrag_retrievers.exact_retriever import ExactRetriever
from lrag_retrievers.usearch_index import UsearchParams
from lrag_retrievers.usearch_retriever import UsearchRetriever
from timing import median_time

FULL = {16: [100, 1_000, 10_000, 100_000, 1_000_000], 1024: [100, 1_000, 10_000, 100_000]}
QUICK = {16: [100, 1_000, 10_000], 1024: [100, 1_000, 5_000]}
RECENT = 20  # the most recent frames are never eligible (local window + recency guard)
BLOCK = 3


def clustered(rng: np.random.Generator, streams: int, n: int, d: int) -> np.ndarray:
    """[streams, n, d] float32: scenes of 20-200 frames, each a slow random walk near a centre."""
    out = np.empty((streams, n, d), dtype=np.float32)
    for s in range(streams):
        t = 0
        while t < n:
            length = min(int(rng.integers(20, 200)), n - t)
            walk = np.cumsum(rng.standard_normal((length, d), dtype=np.float32) * 0.05, axis=0)
            noise = 0.1 * rng.standard_normal((length, d), dtype=np.float32)
            out[s, t:t + length] = rng.standard_normal(d, dtype=np.float32) + walk + noise
            t += length
    return out


def measure(retriever, hist: torch.Tensor, extra: torch.Tensor, queries: list[torch.Tensor],
            eligible: torch.Tensor, k: int, repeats: int, sync) -> dict:
    """Fill ``retriever`` with ``hist`` [S, n, D] and time add / search; ``extra`` [S, B, D]."""
    s, n = hist.shape[:2]
    sync()
    t = time.perf_counter()
    for i in range(s):
        retriever.add(i, torch.arange(n), hist[i])
    sync()
    add_rate = s * n / (time.perf_counter() - t)
    blocks = []
    for b in range(0, extra.shape[1], BLOCK):  # blocks after the bulk add, as a run continues
        ids = torch.arange(n + b, n + b + BLOCK)
        t = time.perf_counter()
        retriever.add(0, ids, extra[0, b:b + BLOCK])
        sync()
        blocks.append(time.perf_counter() - t)
        for i in range(1, s):
            retriever.add(i, ids, extra[i, b:b + BLOCK])
    q = queries[0]
    one = median_time(lambda: retriever.search(q[:1], k, eligible[:1]), repeats, sync)
    batch = median_time(lambda: retriever.search(q, k, eligible), repeats, sync)
    return {"add_rate": add_rate, "block_ms": 1e3 * statistics.median(blocks),
            "one_ms": 1e3 * one, "batch_ms": 1e3 * batch}


def recall(retriever, reference, queries: list[torch.Tensor], eligible: torch.Tensor,
           k: int) -> float:
    hits = total = 0
    for q in queries:
        a, b = retriever.search(q, k, eligible), reference.search(q, k, eligible)
        for ids, ref in zip(a.ids.cpu().tolist(), b.ids.cpu().tolist()):
            ref = [i for i in ref if i >= 0]
            hits += len(set(ids) & set(ref))
            total += len(ref)
    return hits / total


def run(args) -> list[dict]:
    devices = ["cpu", "cuda"] if args.device == "auto" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    sizes = QUICK if args.quick else FULL
    rng = np.random.default_rng(0)
    rows = []
    for d, ns in sizes.items():
        data = clustered(rng, args.streams, max(ns) + 3 * BLOCK, d)
        for n in ns:
            hist = torch.from_numpy(data[:, :n])
            extra = torch.from_numpy(data[:, n:n + 3 * BLOCK])
            picks = rng.integers(0, n, size=(20, args.streams))
            queries = [torch.from_numpy(data[np.arange(args.streams), p]
                                        + 0.05 * rng.standard_normal((args.streams, d),
                                                                     dtype=np.float32))
                       for p in picks]
            eligible = (torch.arange(n + 3 * BLOCK) < max(n - RECENT, 1)).expand(args.streams, -1)
            reference = None
            for dev in devices:
                sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
                r = ExactRetriever(ExactParams())
                to = [t.to(dev) for t in (hist, extra, eligible)]
                res = measure(r, to[0], to[1], [q.to(dev) for q in queries], to[2], args.k,
                              args.repeats, sync)
                rows.append({"retriever": "exact", "device": dev, "dim": d, "frames": n, **res})
                if reference is None:
                    reference = r
                del to
            if n > args.usearch_max:
                continue
            for dtype in ("f32", "f16", "i8"):
                r = UsearchRetriever(UsearchParams(dtype=dtype, threads=args.threads))
                res = measure(r, hist, extra, queries, eligible, args.k, args.repeats,
                              lambda: None)
                res["recall"] = recall(r, reference, queries, eligible, args.k)
                rows.append({"retriever": f"usearch {dtype}", "device": "cpu", "dim": d,
                             "frames": n, **res})
                del r
            print(f"dim {d}, {n} frames per stream: done", flush=True)
    return rows


def table(rows: list[dict], streams: int, k: int) -> str:
    head = ["retriever", "device", "dim", "frames/stream", "add (frames/s)",
            f"add {BLOCK} frames (ms)", "search 1 stream (ms)", f"search {streams} streams (ms)",
            f"recall@{k}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rec = f"{r['recall']:.3f}" if "recall" in r else "1 (exact)"
        cells = [r["retriever"], r["device"], str(r["dim"]), f"{r['frames']:,}",
                 f"{r['add_rate']:,.0f}", f"{r['block_ms']:.3f}", f"{r['one_ms']:.3f}",
                 f"{r['batch_ms']:.3f}", rec]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    return (f"{platform.machine()}, {os.cpu_count()} CPU threads, {gpu}; torch {torch.__version__}"
            f", usearch {usearch.__version__}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (CPU friendly)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="where exact runs (auto: CPU and, when available, CUDA)")
    ap.add_argument("--usearch-max", type=int, default=100_000,
                    help="largest history (frames per stream) usearch is built for")
    ap.add_argument("--streams", type=int, default=8, help="streams in the batched search")
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=20, help="timed searches per measurement")
    ap.add_argument("--threads", type=int, default=0, help="usearch threads (0: all cores)")
    ap.add_argument("--out", help="also write the table as markdown to this path")
    args = ap.parse_args()
    if args.quick:
        args.usearch_max = min(args.usearch_max, 10_000)
    torch.set_num_threads(os.cpu_count() or 1)
    rows = run(args)
    text = (f"Machine: {machine()}.\n\n{table(rows, args.streams, args.k)}\n")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
