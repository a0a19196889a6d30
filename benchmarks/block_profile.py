"""Kernel profile of one block (run as part of `python benchmarks/wan_speed.py --profile`).

Drives the run's own engine (``make_engine`` of the run config) and profiles one block in the
steady state with ``torch.profiler``: CUDA kernel time by kind, and the GPU's idle share of the
block's wall time (wall: from the block's first kernel start to its last kernel end; busy: the
union of kernel intervals in it).
"""
from __future__ import annotations

import re

import torch
from torch.profiler import ProfilerActivity, profile, schedule

KINDS = [("attention", r"flash|fmha|cudnn|attention|sdpa|attn"),
         ("GEMM", r"gemm|cutlass|sm90|sm100|nvjet|xmma|matmul|scaled_mm|cublas"),
         ("copies", r"memcpy|memset|copy|cat"),
         ("norms/elementwise", r".")]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def profile_block(cfg: dict, block: int) -> dict:
    """Profile block ``block`` (0-based) of the retrieval run of ``cfg``."""
    from lrag_framework.config import validate
    from lrag_framework.generation.pipeline import Pipeline

    frames = (block + 1) * 3  # the profiled block is the last one
    run_cfg = validate({**cfg, "generation": {**cfg.get("generation", {}), "num_frames": frames},
                        "compare": False})
    with Pipeline(run_cfg).setup() as pipe:  # its warm-up fills the window
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                     schedule=schedule(wait=block - 1, warmup=1, active=1)) as prof:
            pipe.generate("retrieval", pipe.streams[:1], on_frames=lambda n: prof.step())
            torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and e.time_range.end > e.time_range.start
               and not e.name.startswith("ProfilerStep")]  # the step's own GPU-side span
    spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    busy, last_end = 0.0, float("-inf")
    for start, end in spans:  # union of intervals
        if end > last_end:
            busy += end - max(start, last_end)
            last_end = end
    wall = spans[-1][1] - spans[0][0] if spans else 0.0
    by_kind: dict[str, float] = {}
    for e in kernels:
        k = kind_of(e.name)
        by_kind[k] = by_kind.get(k, 0.0) + (e.time_range.end - e.time_range.start)
    top = {}
    for e in kernels:
        top[e.name] = top.get(e.name, 0.0) + (e.time_range.end - e.time_range.start)
    return {"wall_ms": wall / 1e3, "busy_ms": busy / 1e3, "kernel_ms": sum(by_kind.values()) / 1e3,
            "kinds_ms": {k: v / 1e3 for k, v in sorted(by_kind.items(), key=lambda x: -x[1])},
            "kernels": len(kernels),
            "top": sorted(((v / 1e3, n[:70]) for n, v in top.items()), reverse=True)[:8]}


def print_profile(p: dict, label: str) -> None:
    idle = 1 - p["busy_ms"] / max(p["wall_ms"], 1e-9)
    print(f"\n# one retrieval block ({label}): {p['kernels']} kernels, {p['kernel_ms']:.1f} ms of "
          f"kernels, GPU busy {p['busy_ms']:.1f} ms of {p['wall_ms']:.1f} ms wall "
          f"(idle {100 * idle:.1f}%)\n")
    print("| kernel kind | ms per block | share |")
    print("|---|---|---|")
    for kind, ms in p["kinds_ms"].items():
        print(f"| {kind} | {ms:.1f} | {100 * ms / p['kernel_ms']:.0f}% |")
    print("\n| top kernels | ms |")
    print("|---|---|")
    for ms, name in p["top"]:
        print(f"| `{name}` | {ms:.1f} |")
