"""Kernel profile of steady-state blocks (run by `python benchmarks/wan_speed.py --profile`).

Drives the run's own pipeline and profiles ``BLOCKS`` consecutive retrieval blocks with
``torch.profiler`` (GPU activity only, so the profiler adds no host work between launches):
CUDA kernel time per block by kind, and the GPU's idle share of the wall time (wall: from the
first kernel's start to the last kernel's end over the profiled blocks; busy: the union of kernel
intervals in it), with the longest idle gaps and the kernels around them. The block after them
runs under ``torch.cuda.set_sync_debug_mode("warn")``: every place in the project's code that
synchronised the host with the GPU in it is listed (syncs on a side stream included).
"""
from __future__ import annotations

import re
import traceback
import warnings

import torch
from torch.profiler import ProfilerActivity, profile, schedule

KINDS = [("attention", r"flash|fmha|cudnn|attention|sdpa|attn"),
         ("GEMM", r"gemm|cutlass|sm90|sm100|nvjet|xmma|matmul|scaled_mm|cublas"),
         ("copies", r"^memcpy|^memset|^void at::native::.*copy|^cat"),
         ("norms/elementwise", r".")]
BLOCKS = 4  # profiled consecutive blocks
GAP_US = 50.0  # gaps shorter than this are launch jitter


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def profile_block(cfg: dict, block: int) -> dict:
    """Profile blocks ``block`` .. ``block + BLOCKS - 1`` (0-based) of the retrieval run of
    ``cfg``, then list the host syncs of the next block."""
    from lrag_framework.config import validate
    from lrag_framework.generation.pipeline import Pipeline

    frames = (block + BLOCKS + 2) * 3  # every profiled block retrieves for the next
    run_cfg = validate({**cfg, "generation": {**cfg.get("generation", {}), "num_frames": frames},
                        "compare": False})
    sites: dict[str, int] = {}
    done = {"blocks": 0}

    def record(*args, **kwargs):
        stack = traceback.extract_stack()[:-1]
        if any(f.name == "on_frames" and f.filename.endswith("block_profile.py") for f in stack):
            return  # the switch below
        frames = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in stack
                  if "lrag" in f.filename or "adapters" in f.filename]
        key = " < ".join(reversed(frames[-3:])) or "outside the project"
        sites[key] = sites.get(key, 0) + 1

    with Pipeline(run_cfg).setup() as pipe, warnings.catch_warnings():  # warm-up fills the window
        warnings.simplefilter("always")
        shown, warnings.showwarning = warnings.showwarning, record
        torch.cuda.synchronize()
        try:
            with profile(activities=[ProfilerActivity.CUDA],
                         schedule=schedule(wait=block - 1, warmup=1, active=BLOCKS,
                                           repeat=1)) as prof:
                def on_frames(n):
                    done["blocks"] += 1
                    prof.step()
                    torch.cuda.set_sync_debug_mode(
                        "warn" if done["blocks"] == block + BLOCKS else 0)

                pipe.generate("retrieval", pipe.streams[:1], on_frames=on_frames)
                torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning = shown
    kernels = sorted((e for e in prof.events()
                      if e.device_type == torch.autograd.DeviceType.CUDA
                      and e.time_range.end > e.time_range.start
                      and not e.name.startswith("ProfilerStep")),  # the step's own span
                     key=lambda e: e.time_range.start)
    busy, last_end, last_name, gaps = 0.0, None, "", []
    for e in kernels:  # union of intervals (side-stream kernels overlap), and the idle gaps
        start, end = e.time_range.start, e.time_range.end
        if last_end is not None and start - last_end > GAP_US:
            gaps.append(((start - last_end) / 1e3, last_name[:50], e.name[:50]))
        if last_end is None or end > last_end:
            busy += end - (start if last_end is None else max(start, last_end))
            last_end, last_name = end, e.name
    wall = kernels[-1].time_range.end - kernels[0].time_range.start if kernels else 0.0
    by_kind: dict[str, float] = {}
    top: dict[str, float] = {}
    for e in kernels:
        k = kind_of(e.name)
        by_kind[k] = by_kind.get(k, 0.0) + (e.time_range.end - e.time_range.start) / BLOCKS
        top[e.name] = top.get(e.name, 0.0) + (e.time_range.end - e.time_range.start) / BLOCKS
    return {"wall_ms": wall / 1e3 / BLOCKS, "busy_ms": busy / 1e3 / BLOCKS,
            "kernel_ms": sum(by_kind.values()) / 1e3,
            "kinds_ms": {k: v / 1e3 for k, v in sorted(by_kind.items(), key=lambda x: -x[1])},
            "kernels": len(kernels) / BLOCKS,
            "top": sorted(((v / 1e3, n[:70]) for n, v in top.items()), reverse=True)[:8],
            "gaps": sorted(gaps, reverse=True),
            "sync_sites": sorted(((n, k) for k, n in sites.items()), reverse=True)}


def print_profile(p: dict, label: str) -> None:
    idle = 1 - p["busy_ms"] / max(p["wall_ms"], 1e-9)
    print(f"\n# retrieval blocks ({label}), per block over {BLOCKS}: {p['kernels']:.0f} kernels, "
          f"{p['kernel_ms']:.1f} ms of kernels, GPU busy {p['busy_ms']:.1f} ms of "
          f"{p['wall_ms']:.1f} ms wall (idle {100 * idle:.1f}%)\n")
    print("| kernel kind | ms per block | share |")
    print("|---|---|---|")
    for kind, ms in p["kinds_ms"].items():
        print(f"| {kind} | {ms:.1f} | {100 * ms / p['kernel_ms']:.0f}% |")
    print("\n| top kernels | ms per block |")
    print("|---|---|")
    for ms, name in p["top"]:
        print(f"| `{name}` | {ms:.1f} |")
    gaps = p["gaps"]
    print(f"\n{len(gaps)} idle gaps over {GAP_US:.0f} us in {BLOCKS} blocks, "
          f"{sum(g[0] for g in gaps):.1f} ms in all; the longest:\n")
    print("| gap ms | after kernel | before kernel |")
    print("|---|---|---|")
    for ms, before, after in gaps[:6]:
        print(f"| {ms:.2f} | `{before}` | `{after}` |")
    print("\n| host syncs in the next block | where (innermost project frames) |")
    print("|---|---|")
    for n, where in p["sync_sites"] or [(0, "none")]:
        print(f"| {n} | `{where[:160]}` |")
