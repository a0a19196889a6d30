"""Speed and memory of the public LongLive-RAG code at Wan2.1-1.3B sizes, for a table beside ours.

Imports ``CausalWanModel`` (``wan/modules/causal_model_latentmem.py`` for retrieval,
``causal_model.py`` for native, as the public ``*_native.yaml`` configs run) from a checkout of
https://github.com/qixinhu11/LongLive-RAG (never vendored), loads random bf16 weights and runs the
public pipeline's block loop (``wan_fidelity.public_generate``: rolling KV cache, evicted frames
copied to a CPU pool, ``avg_pool`` cosine retrieval of the last frame, recache at t = 0) on one
GPU: one random prompt embedding, 3-frame blocks, window 12, sink 1, K = 6, R = 5, the
``self_forcing`` schedule, eager as the public code runs. Its attention calls ``flash_attn``,
which is swapped for torch's SDPA with the backend order ours uses (cuDNN first), so the model
code is compared and not two attention libraries.

    python benchmarks/public_speed.py --public ../LongLive-RAG --frames 120

Prints one row per mode: seconds of the timed run (after a 2-block warm-up run), video FPS
(4T - 3 video frames), retrieval/native, peak GPU memory, host memory growth (after and peak).
With ``--decode`` the run's latents are then decoded as the public pipeline does after
generating (``WanVAEWrapper.decode_to_pixel_chunk``: the public ``WanVAE_`` with random weights,
chunks of 60 latent frames, frames to the CPU), and end to end is generation + decode.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lrag_adapters.wan.backbone import WanBackbone, attention_backends
from lrag_adapters.wan.presets import PRESETS
from wan_fidelity import import_public, public_generate, public_model
from wan_speed import reset_host_peak, rss_bytes

FULL = {"num_layers": 30, "dim": 1536, "num_heads": 12, "ffn_dim": 8960, "freq_dim": 256,
        "text_dim": 4096, "text_len": 512, "latent_channels": 16, "latent_height": 60,
        "latent_width": 104}
WINDOW, SINK, K, RECENCY = 12, 1, 6, 5


def sdpa(q, k, v, *args, **kwargs):
    """flash_attn's [B, L, H, D] signature on torch's SDPA, in the inputs' dtype."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def public_vae(device, dtype):
    """The public Wan2.1 VAE (``wan/modules/vae.py``, ``_video_vae``'s sizes), random weights."""
    from wan.modules.vae import WanVAE_

    return WanVAE_(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                   temperal_downsample=[False, True, True]).eval().to(device, dtype)


def decode_seconds(vae, latents) -> float:
    """Seconds to decode [1, T, C, H, W] as ``decode_to_pixel_chunk`` does (no cache, chunks of
    60 latent frames, each chunk's frames copied to the CPU)."""
    scale = [torch.zeros(16, device=latents.device, dtype=latents.dtype),
             torch.ones(16, device=latents.device, dtype=latents.dtype)]
    u = latents[0].permute(1, 0, 2, 3)  # [C, T, H, W]
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, u.shape[1], 60):
            vae.clear_cache()
            chunk = vae.decode(u[None, :, first:first + 60], scale).float().clamp_(-1, 1)
            chunk.cpu()
            del chunk
            torch.cuda.empty_cache()
    vae.clear_cache()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--public", type=Path, required=True, help="LongLive-RAG checkout")
    parser.add_argument("--frames", type=int, nargs="+", default=[120])
    parser.add_argument("--modes", choices=["native", "retrieval"], nargs="+",
                        default=["native", "retrieval"])
    parser.add_argument("--decode", action="store_true",
                        help="decode with the public VAE after generating (end to end)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("the public code's speed is measured on CUDA")
    latentmem, native, scheduler_cls = import_public(args.public.resolve(), sdpa,
                                                     cpu_copies_cloned=False)
    device, dtype = torch.device("cuda"), torch.bfloat16
    params = PRESETS["self_forcing"](random_init=True, window=WINDOW, sink=SINK, **FULL)
    state = WanBackbone(params).to("cpu", torch.float32).model.state_dict()
    text = (torch.randn(512, 4096, generator=torch.Generator().manual_seed(0)) * 0.1
            ).to(device, dtype)
    print(f"# public_speed: LongLive-RAG at {args.public.name}, random weights, "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"{platform.python_version()}; bf16, SDPA (cuDNN first) for flash_attn, eager; "
          f"window {WINDOW}, sink {SINK}, K {K}, R {RECENCY}\n")
    print("| latent frames | mode | seconds | video FPS | RAG/native | peak GPU GiB | "
          "host +GiB (peak) | decode s | end-to-end video FPS |")
    print("|---|---|---|---|---|---|---|---|---|")
    vae = public_vae(device, dtype) if args.decode else None
    for frames in args.frames:
        native_s = None
        for mode in args.modes:
            k = K if mode == "retrieval" else 0
            module, memory = (latentmem, {"memory_size": K}) if k else (native, {})
            model = public_model(module, state, WINDOW, SINK, FULL, **memory).to(device, dtype)

            def generate(n):
                with attention_backends("cudnn", device):
                    out = public_generate(model, scheduler_cls, params, text, k, WINDOW, RECENCY,
                                          n, FULL, device, dtype)[0]
                torch.cuda.synchronize()
                return out

            generate(6)  # warm-up: kernels chosen, allocator filled
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            reset_host_peak()
            before = rss_bytes()
            start = time.perf_counter()
            latents = generate(frames)
            seconds = time.perf_counter() - start
            host, host_peak = rss_bytes() - before, rss_bytes("VmHWM") - before
            peak = torch.cuda.max_memory_allocated()
            decode = decode_seconds(vae, latents) if vae is not None else None
            native_s = native_s or (seconds if mode == "native" else None)
            ratio = f"{seconds / native_s:.2f}x" if native_s else "-"
            gib = 2 ** 30
            print(f"| {frames} | {mode} | {seconds:.2f} | {(4 * frames - 3) / seconds:.1f} | "
                  f"{ratio} | {peak / gib:.2f} | {host / gib:+.2f} ({host_peak / gib:+.2f}) | "
                  + (f"{decode:.2f} | {(4 * frames - 3) / (seconds + decode):.1f} |"
                     if decode is not None else "- | - |"), flush=True)
            del model, latents
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
