"""Kernel profile of one block (run as part of `python benchmarks/wan_speed.py --profile`).

Drives the run's own engine (``make_engine`` of the run config) and profiles one block in the
steady state with ``torch.profiler``: CUDA kernel time by kind, the GPU's idle share of the
block's wall time (wall: from the block's first kernel start to its last kernel end; busy: the
union of kernel intervals in it), the longest idle gaps with the host call that drained the GPU
before each (a CUDA synchronisation returning at the gap's start; none: the host was late
launching), and, from a second pass with ``torch.cuda.set_sync_debug_mode``, every place in
the block's Python code that synchronised with the GPU.
"""
from __future__ import annotations

import re
import traceback
import warnings

import torch
from torch.profiler import ProfilerActivity, profile, schedule

KINDS = [("attention", r"flash|fmha|cudnn|attention|sdpa|attn"),
         ("GEMM", r"gemm|cutlass|sm90|sm100|nvjet|xmma|matmul|scaled_mm|cublas"),
         ("copies", r"memcpy|memset|copy|cat"),
         ("norms/elementwise", r".")]
SYNCS = re.compile(r"cuda(Stream|Device|Event)Synchronize|cudaMemcpy(Async)?$|cudaStreamWait")
GAP_US = 50.0  # gaps shorter than this are launch jitter


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def _pipeline(cfg: dict, block: int):
    from lrag_framework.config import validate
    from lrag_framework.generation.pipeline import Pipeline

    frames = (block + 1) * 3  # the profiled block is the last one
    run_cfg = validate({**cfg, "generation": {**cfg.get("generation", {}), "num_frames": frames},
                        "compare": False})
    return Pipeline(run_cfg).setup()  # its warm-up fills the window


def _where(event) -> str:
    """The outermost op above a runtime event, and the innermost project frame of its stack."""
    op, frames = event, []
    while True:
        frames = frames or [f for f in (op.stack or []) if "lrag" in f or "adapters" in f]
        if op.cpu_parent is None:
            break
        op = op.cpu_parent
    return f"{op.name}{' @ ' + frames[0] if frames else ''}"


def profile_block(cfg: dict, block: int) -> dict:
    """Profile block ``block`` (0-based) of the retrieval run of ``cfg``."""
    with _pipeline(cfg, block) as pipe:
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True,
                     schedule=schedule(wait=block - 1, warmup=1, active=1)) as prof:
            pipe.generate("retrieval", pipe.streams[:1], on_frames=lambda n: prof.step())
            torch.cuda.synchronize()
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
               and e.time_range.end > e.time_range.start
               and not e.name.startswith("ProfilerStep")]  # the step's own GPU-side span
    spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    busy, last_end, gaps = 0.0, float("-inf"), []
    for start, end in spans:  # union of intervals, and the idle gaps between them
        if last_end > float("-inf") and start - last_end > GAP_US:
            gaps.append((last_end, start))
        if end > last_end:
            busy += end - max(start, last_end)
            last_end = end
    syncs = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU
             and SYNCS.search(e.name)]
    gap_rows = []
    for start, end in gaps:  # the sync that returned as the GPU ran dry, if any
        drained = [e for e in syncs if start - GAP_US <= e.time_range.end <= end
                   and e.time_range.end - e.time_range.start > GAP_US]
        gap_rows.append(((end - start) / 1e3, _where(drained[0]) if drained else
                         "none (host late launching)"))
    wall = spans[-1][1] - spans[0][0] if spans else 0.0
    by_kind: dict[str, float] = {}
    top: dict[str, float] = {}
    for e in kernels:
        k = kind_of(e.name)
        by_kind[k] = by_kind.get(k, 0.0) + (e.time_range.end - e.time_range.start)
        top[e.name] = top.get(e.name, 0.0) + (e.time_range.end - e.time_range.start)
    return {"wall_ms": wall / 1e3, "busy_ms": busy / 1e3, "kernel_ms": sum(by_kind.values()) / 1e3,
            "kinds_ms": {k: v / 1e3 for k, v in sorted(by_kind.items(), key=lambda x: -x[1])},
            "kernels": len(kernels),
            "top": sorted(((v / 1e3, n[:70]) for n, v in top.items()), reverse=True)[:8],
            "gaps": sorted(gap_rows, reverse=True), "sync_sites": sync_sites(cfg, block)}


def sync_sites(cfg: dict, block: int) -> list[tuple[int, str]]:
    """Each place that synchronised with the GPU during block ``block``, with its count:
    ``torch.cuda.set_sync_debug_mode("warn")`` for that block, the warning's project frames."""
    sites: dict[str, int] = {}

    def record(*args, **kwargs):
        frames = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                  for f in traceback.extract_stack()[:-1]
                  if ("lrag" in f.filename or "adapters" in f.filename)]
        key = " < ".join(reversed(frames[-3:])) or "outside the project"
        sites[key] = sites.get(key, 0) + 1

    seen = {"blocks": 0}

    def on_frames(n):
        seen["blocks"] += 1
        torch.cuda.set_sync_debug_mode("warn" if seen["blocks"] == block else 0)

    with _pipeline(cfg, block) as pipe, warnings.catch_warnings():
        warnings.simplefilter("always")
        shown, warnings.showwarning = warnings.showwarning, record
        try:
            pipe.generate("retrieval", pipe.streams[:1], on_frames=on_frames)
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning = shown
    return sorted(((n, k) for k, n in sites.items()), reverse=True)


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
    gaps = p["gaps"]
    print(f"\n{len(gaps)} idle gaps over {GAP_US:.0f} us, {sum(g for g, _ in gaps):.1f} ms "
          f"in all; the longest:\n")
    print("| gap ms | drained by (op @ project frame) |")
    print("|---|---|")
    for ms, where in gaps[:10]:
        print(f"| {ms:.2f} | `{where[:150]}` |")
    print("\n| host syncs in the block | where (innermost project frames) |")
    print("|---|---|")
    for n, where in p["sync_sites"] or [(0, "none")]:
        print(f"| {n} | `{where[:180]}` |")
