"""Speed and memory of a Wan2.1-1.3B causal backbone, native vs retrieval, through ``run()``.

Random weights (``random_init``), so no checkpoint is needed; one random prompt embedding. For each
length it runs native (sliding window) and retrieval (K = 6, R = 5, ``reference`` placement,
window 12, sink 1, the LongLive-RAG defaults) as separate runs and prints one markdown row per
run: DiT seconds (after run()'s warm-up block, VAE excluded), video FPS (a latent frame is 4 video
frames: 4T - 3 in all), the retrieval/native time ratio, peak GPU memory, host memory growth
(RSS after the run minus before, and peak minus before), the history K/V bytes per frame, and
the mean time per block in each quarter of the run (host clock at each finished block: does a
long run slow down as it goes?).

    python benchmarks/wan_speed.py                       # H100: 120 and 480 latent frames
    python benchmarks/wan_speed.py --tiny                # CPU smoke check, tiny model
    python benchmarks/wan_speed.py --frames 120 --budget-gb 40 --preset causal_forcing
    python benchmarks/wan_speed.py --quantize none float8 --profile   # fp8 rows + error, profile
    python benchmarks/wan_speed.py --cuda-graphs off on                # CUDA graphs side by side
    python benchmarks/wan_speed.py --fused-gelu off on                 # FFN epilogue A/B

History K/V lives in a device pool bounded by ``--budget-gb`` (``--policy``, default ``thin``, the
run default): 480 frames of 1.3B K/V (0.27 GiB each in bf16) do not fit an 80 GiB card, some
evicted frames give up their K/V (they stay indexed but can no longer be retrieved; the "dropped"
column). ``--budget-gb auto`` lets the memory rule pick storage and tier so that every frame
keeps its K/V. With ``--quantize none float8`` each length runs in both and the float8 rows are
followed by their error against bf16 on the same noise (relative L2 of the retrieval run's
latents, PSNR of the first decoded frames). ``--profile`` adds the kernel profile of steady-state
retrieval blocks in the first linear setting (``benchmarks/block_profile.py``).
"""
from __future__ import annotations

import argparse
import math
import platform
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import lrag_framework
from block_profile import print_profile, profile_block

TINY = {"num_layers": 2, "dim": 64, "num_heads": 4, "ffn_dim": 128, "freq_dim": 32, "text_dim": 64,
        "text_len": 16, "latent_channels": 4, "latent_height": 8, "latent_width": 12}


def build_config(preset: str, frames: int, retrieval: bool, tiny: bool, prompt: Path,
                 out_dir: Path, budget_gb: float | str, storage: str = "auto", tier: str = "auto",
                 attention: str = "cudnn", compile: bool = True, policy: str = "thin",
                 quantize: str = "none", save_latents: bool = False,
                 cuda_graphs: bool = True, fused_gelu: bool = True) -> dict:
    """The run config of one benchmark row (the only place that knows the config's fields)."""
    backbone = {"random_init": True, "attention": attention, "compile": compile,
                "quantize": quantize, "cuda_graphs": cuda_graphs, "fused_gelu": fused_gelu,
                **(TINY if tiny else {})}
    return {
        "name": f"wan_speed_{frames}_{'retrieval' if retrieval else 'native'}",
        "backbone": {"name": preset, "params": backbone},
        "embedder": {"name": "avg_pool", "params": {}},
        "retriever": {"name": "exact", "params": {}},
        "retrieval": {"enabled": retrieval, "k": 6, "recency": 5, "placement": "reference"},
        "generation": {"num_frames": frames, "window": 12, "sink": 1, "batch_size": 1,
                       "seed": 0},
        "conditionings": [str(prompt)],
        "memory": {"budget_gb": budget_gb, "policy": policy,
                   **({"storage": storage} if storage != "auto" else {}),
                   **({"tier": tier} if tier != "auto" else {})},
        "output": {"root": str(out_dir), "video": False, "save_latents": save_latents},
        "device": "cpu" if tiny else "cuda",
    }


def rss_bytes(field: str = "VmRSS") -> int:
    """Resident (or, with VmHWM, peak resident) host memory of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_host_peak() -> None:
    try:  # Linux: writing 5 resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class BlockClock:
    """A ``run(progress=...)`` bar that notes the host time at each finished block."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, mode: str, total: int) -> BlockClock:
        self.times = [time.perf_counter()]
        return self

    def update(self, n: int) -> None:
        self.times.append(time.perf_counter())

    def close(self) -> None:
        pass

    def quarters(self) -> str:
        """Mean ms per block in each quarter of the run's blocks (the first block left out:
        run()'s warm-up precedes it, so the host may be ahead of the GPU there)."""
        gaps = [b - a for a, b in zip(self.times[1:], self.times[2:])]
        if len(gaps) < 4:
            return "-"
        q = len(gaps) // 4
        parts = [gaps[i * q:(i + 1) * q if i < 3 else len(gaps)] for i in range(4)]
        return " / ".join(f"{1000 * sum(p) / len(p):.0f}" for p in parts)


def measure(cfg: dict) -> dict:
    cuda = cfg["device"] == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    reset_host_peak()
    before = rss_bytes()
    clock = BlockClock()
    start = time.perf_counter()
    result = lrag_framework.run(cfg, progress=clock)
    wall = time.perf_counter() - start
    mode = "retrieval" if cfg["retrieval"]["enabled"] else "native"
    summary = result.summary["modes"][mode]
    return {"mode": mode, "frames": summary["frames"], "seconds": summary["seconds"],
            "latents": result.latents[mode],
            "resolved": (result.summary.get("memory_resolved") or {}).get("resolved"),
            "timings": summary["timings"], "setup": wall - summary["seconds"],
            "memory": summary["memory"],
            "blocks_retrieved": summary["blocks_retrieved"], "quarters": clock.quarters(),
            "gpu_peak": torch.cuda.max_memory_allocated() if cuda else 0,
            "host_growth": rss_bytes() - before, "host_peak_growth": rss_bytes("VmHWM") - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (smoke check)")
    parser.add_argument("--frames", type=int, nargs="+", help="latent frames (default: 120 480, "
                        "tiny: 24 48)")
    parser.add_argument("--preset", default="self_forcing")
    parser.add_argument("--budget-gb", type=lambda v: v if v == "auto" else float(v),
                        default=40.0, help="history K/V pool budget (GiB, or auto)")
    parser.add_argument("--policy", choices=["thin", "drop_oldest"], default="thin")
    parser.add_argument("--quantize", choices=["none", "float8"], nargs="+", default=["none"],
                        help="DiT linear layers; several: one set of rows each")
    parser.add_argument("--cuda-graphs", choices=["off", "on"], nargs="+", default=["on"],
                        help="replay the DiT passes as CUDA graphs (default on); several: rows "
                        "for each")
    parser.add_argument("--fused-gelu", choices=["off", "on"], nargs="+", default=["on"],
                        help="the FFN's bias and GELU in its GEMM's epilogue (default on); "
                        "several: rows for each")
    parser.add_argument("--profile", action="store_true",
                        help="kernel profile of retrieval blocks at the first length")
    parser.add_argument("--modes", choices=["native", "retrieval"], nargs="+",
                        default=["native", "retrieval"], help="the modes to time")
    parser.add_argument("--profile-only", action="store_true",
                        help="only the block profile (no timed rows)")
    parser.add_argument("--storage", choices=["auto", "float8"], default="auto")
    parser.add_argument("--tier", choices=["auto", "cpu"], default="auto",
                        help="cpu: history K/V in pinned host memory")
    parser.add_argument("--attention", choices=["cudnn", "flash", "default"], default="cudnn",
                        help="preferred SDPA kernel")
    parser.add_argument("--eager", dest="compile", action="store_false",
                        help="no torch.compile (the preset's default compiles on CUDA)")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        parser.error("the full-size benchmark needs CUDA; use --tiny for a CPU smoke check")
    frames = args.frames or ([24, 48] if args.tiny else [120, 480])
    device = "cpu" if args.tiny else torch.cuda.get_device_name()
    print(f"# wan_speed: {args.preset}{' (tiny)' if args.tiny else ''}, random weights, "
          f"{device}, torch {torch.__version__}, {platform.python_version()}; attention "
          f"{args.attention}, compile {args.compile}, storage {args.storage}, tier {args.tier}, "
          f"budget {args.budget_gb} GiB, policy {args.policy}\n")
    print("| latent frames | linear | graphs | fused GELU | mode | seconds | video FPS | "
          "RAG/native | denoise s | recache s | plan+gather s | retrieval s | peak GPU GiB | "
          "host +GiB (peak) | history MiB/frame | storage, tier, budget GiB | dropped | "
          "pool setup s | setup s (build, warm-up, compile) | ms per block by quarter of the run |")
    print("|" + "---|" * 20)
    gib = 2 ** 30
    errors, profiles = [], []
    with tempfile.TemporaryDirectory() as tmp:
        text_dim, text_len = (TINY["text_dim"], TINY["text_len"]) if args.tiny else (4096, 512)
        prompt = Path(tmp) / "prompt.safetensors"
        gen = torch.Generator().manual_seed(0)
        save_file({"prompt_embeds": torch.randn(text_len, text_dim, generator=gen) * 0.1},
                  str(prompt))

        def config(t, retrieval, quantize, graphs="on", fused="on"):
            return build_config(args.preset, t, retrieval, args.tiny, prompt, Path(tmp) / "runs",
                                args.budget_gb, args.storage, args.tier, args.attention,
                                args.compile, args.policy, quantize,
                                cuda_graphs=graphs == "on", fused_gelu=fused == "on")

        for t in frames:
            latents = {}
            for quantize, graphs, fused in ((q, g, f) for q in args.quantize
                                            for g in args.cuda_graphs for f in args.fused_gelu):
                native = None
                for retrieval in () if args.profile_only else (False, True):
                    if ("retrieval" if retrieval else "native") not in args.modes:
                        continue
                    r = measure(config(t, retrieval, quantize, graphs, fused))
                    native = native or (None if retrieval else r["seconds"])
                    ratio = f"{r['seconds'] / native:.2f}x" if native else "-"
                    tm, mem, res = r["timings"], r["memory"], r["resolved"] or {}
                    where = (f"{res.get('storage', args.storage)}, {res.get('tier', args.tier)}, "
                             f"{mem['kv_pool_bytes'] / gib:.1f}")
                    print(f"| {t} | {quantize} | {graphs} | {fused} | {r['mode']} | "
                          f"{r['seconds']:.2f} | {(4 * t - 3) / r['seconds']:.1f} | {ratio} | "
                          f"{tm['denoise']:.2f} | {tm['recache']:.2f} | {tm['plan_gather']:.2f} | "
                          f"{tm['retrieval']:.2f} | {r['gpu_peak'] / gib:.2f} | "
                          f"{r['host_growth'] / gib:+.2f} ({r['host_peak_growth'] / gib:+.2f}) | "
                          f"{mem['kv_frame_bytes'] / 2 ** 20:.3f} | {where} | "
                          f"{mem['kv_dropped_frames']} | {tm['memory_setup']:.1f} | "
                          f"{r['setup'] - tm['memory_setup']:.1f} | {r['quarters']} |",
                          flush=True)
                    latents[quantize, graphs, fused] = r["latents"]
                if (args.profile or args.profile_only) and t == frames[0] and not args.tiny \
                        and quantize == args.quantize[0] and fused == args.fused_gelu[-1]:
                    profiles.append((f"{t} frames, {quantize}, graphs {graphs}, fused GELU "
                                     f"{fused}", profile_block(config(t, True, quantize, graphs,
                                                                      fused), PROFILED_BLOCK)))
            fused = args.fused_gelu[0]
            for graphs in args.cuda_graphs:
                if ("float8", graphs, fused) in latents and ("none", graphs, fused) in latents:
                    errors.append((t, *float8_error(latents["none", graphs, fused],
                                                    latents["float8", graphs, fused],
                                                    args.tiny)))
            if ("none", "on", fused) in latents and ("none", "off", fused) in latents:
                diff = (latents["none", "on", fused] - latents["none", "off", fused]).abs().max()
                last = "retrieval" if "retrieval" in args.modes else "native"  # run last
                print(f"\n{t} frames, CUDA graphs on vs off ({last}): largest latent "
                      f"difference {float(diff):.3g}\n", flush=True)
            pair = [latents.get(("none", args.cuda_graphs[0], f)) for f in ("off", "on")]
            if pair[0] is not None and pair[1] is not None:
                rel = (pair[1] - pair[0]).norm() / pair[0].norm()
                print(f"\n{t} frames, fused GELU on vs off: relative L2 of the latents "
                      f"{float(rel):.3g}\n", flush=True)
    if errors:
        print("\n| latent frames | float8 vs bf16: relative L2 of latents | per block (first, "
              "last) | PSNR dB of the first 12 latent frames decoded (VAE) |")
        print("|---|---|---|---|")
        for t, rel, first, last, psnr in errors:
            print(f"| {t} | {rel:.4f} | {first:.4f}, {last:.4f} | {psnr:.1f} |")
    for label, p in profiles:
        print_profile(p, label)


PROFILED_BLOCK = 20  # steady state: window full, retrieval running


def float8_error(ref: torch.Tensor, test: torch.Tensor, tiny: bool) -> tuple:
    """Relative L2 of the whole retrieval run's latents [B, T, C, H, W], of its first and last
    block, and the PSNR of the first 12 latent frames decoded by a random-weight Wan VAE."""
    from lrag_adapters.wan.vae import VAEConfig, random_vae

    def rel(a, b):
        return float((b - a).norm() / a.norm())

    device, dtype = ("cpu", torch.float32) if tiny else ("cuda", torch.bfloat16)
    vae = random_vae(VAEConfig(dim=8 if tiny else 96)).to(device, dtype)
    with torch.no_grad():
        video = [vae.decode(x[:, :12].transpose(1, 2).to(device)).float() for x in (ref, test)]
    mse = float((video[0] - video[1]).pow(2).mean())
    psnr = 10 * math.log10(4.0 / max(mse, 1e-12))  # pixels in [-1, 1]: peak-to-peak 2
    return rel(ref, test), rel(ref[:, :3], test[:, :3]), rel(ref[:, -3:], test[:, -3:]), psnr


if __name__ == "__main__":
    main()
