"""Streaming decode speed of the Wan2.1 VAE and of TAEHV's decoder (random full-size weights) at
480x832: seconds per latent frame when fed blocks of 3 latent frames, in each execution setting,
and each setting's output against the first one (relative L2, same latents).

    python benchmarks/wan_vae_speed.py            # CUDA
    python benchmarks/wan_vae_speed.py --tiny     # CPU smoke check (small frames)

Settings on CUDA: ``contiguous`` (the VAE as it ran before: default memory format, cudnn's
default algorithm choice), ``channels_last_3d``, ``channels_last_3d + cudnn.benchmark``
(``WanBackbone`` sets both on CUDA), that ``+ compile`` (``vae_compile: true``; its compile time
is in the first block's seconds), each one latent frame per decoder pass (upstream's way) and,
marked ``whole blocks``, a block's frames after the first in one pass, and TAEHV's decoder
(``decoder: taehv``, channels_last).
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from lrag_adapters.wan import vae as vae_module
from lrag_adapters.wan.taehv import random_taehv
from lrag_adapters.wan.vae import VAEConfig, random_vae


def timed(decode_block, latents: torch.Tensor, blocks: int, sync) -> tuple[float, float, list]:
    """(seconds of the first block, seconds per latent frame after it, outputs of two blocks)."""
    if latents.is_cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    first = decode_block(latents)
    sync()
    first_s = time.perf_counter() - start
    second = decode_block(latents)
    sync()
    start = time.perf_counter()
    for _ in range(blocks):
        decode_block(latents)
    sync()
    return first_s, (time.perf_counter() - start) / (blocks * latents.shape[1]), [first, second]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--fast-only", action="store_true",
                        help="on CUDA: only the contiguous reference and the compiled rows")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    h, w = (8, 12) if args.tiny else (60, 104)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    latents = torch.randn(1, 3, 16, h, w, device=device, dtype=dtype)  # [B, F, C, h, w]
    real_fast_convs = vae_module.fast_convs

    def vae_setting(channels_last: bool, benchmark: bool, compile: bool, chunk: int | None = 1):
        def build():
            vae = random_vae(VAEConfig(dim=8 if args.tiny else 96)).to(device, dtype)
            if channels_last:
                vae.channels_last()
            if compile:
                vae.compile_decoder()
            vae_module.fast_convs = real_fast_convs if benchmark else (
                lambda device: contextlib.nullcontext())
            stream = vae.stream_decoder(chunk)
            return lambda z: stream.decode(z.transpose(1, 2)).transpose(1, 2)
        return build

    def taehv():
        model = random_taehv().to(device, dtype)
        if cuda:
            model.to(memory_format=torch.channels_last)
        return model.stream_decoder().decode

    settings = [("contiguous", vae_setting(False, False, False))]
    if cuda:
        if not args.fast_only:
            settings += [("channels_last_3d", vae_setting(True, False, False)),
                         ("channels_last_3d + cudnn.benchmark", vae_setting(True, True, False)),
                         ("channels_last_3d + cudnn.benchmark, whole blocks",
                          vae_setting(True, True, False, None))]
        if args.compile:
            settings += [("channels_last_3d + cudnn.benchmark + compile",
                          vae_setting(True, True, True)),
                         ("channels_last_3d + cudnn.benchmark + compile, whole blocks",
                          vae_setting(True, True, True, None))]
    settings += [("TAEHV decoder", taehv)]
    print(f"# wan_vae_speed: {torch.cuda.get_device_name() if cuda else 'cpu'}, {dtype}, "
          f"latents {h}x{w}, blocks of 3, {args.blocks} timed blocks after two\n")
    print("| setting | first block s (incl. compile) | s per latent frame | video frames/s | "
          "rel. L2 vs contiguous | peak GPU GiB |")
    print("|---|---|---|---|---|---|")
    ref = None
    with torch.no_grad():
        for name, build in settings:
            first, per, outs = timed(build(), latents, args.blocks, sync)
            out = torch.cat(outs, dim=1).float()
            if ref is None:
                ref = out
            rel = float((out - ref).norm() / ref.norm()) if "TAEHV" not in name else float("nan")
            peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else 0.0
            print(f"| {name} | {first:.2f} | {per:.4f} | {4 / per:.1f} | {rel:.2e} | "
                  f"{peak:.2f} |", flush=True)
    vae_module.fast_convs = real_fast_convs


if __name__ == "__main__":
    main()
