"""Streaming decode speed of the Wan2.1 VAE (random full-size weights) at 480x832: seconds per
latent frame when fed blocks of 3 latent frames, in a few execution settings.

    python benchmarks/wan_vae_speed.py            # CUDA
    python benchmarks/wan_vae_speed.py --tiny     # CPU smoke check (small frames)
"""
from __future__ import annotations

import argparse
import time

import torch

from lrag_adapters.wan.vae import VAEConfig, random_vae


def timed_decode(vae, latents: torch.Tensor, blocks: int, sync) -> float:
    """Seconds per latent frame, streaming ``blocks`` blocks of 3 latent frames (after one)."""
    stream = vae.stream_decoder()
    stream.decode(latents)  # the first block: one-frame special case and warm-up
    sync()
    start = time.perf_counter()
    for _ in range(blocks):
        stream.decode(latents)
    sync()
    return (time.perf_counter() - start) / (blocks * latents.shape[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--blocks", type=int, default=6)
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    h, w = (8, 12) if args.tiny else (60, 104)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    vae = random_vae(VAEConfig(dim=8 if args.tiny else 96)).to(device, dtype)
    latents = torch.randn(1, 16, 3, h, w, device=device, dtype=dtype)
    settings = [("eager", lambda: None)]
    if cuda:
        settings += [("cudnn.benchmark", lambda: setattr(torch.backends.cudnn, "benchmark", True))]
    print(f"# wan_vae_speed: {torch.cuda.get_device_name() if cuda else 'cpu'}, {dtype}, "
          f"latents {h}x{w}, blocks of 3\n")
    print("| setting | s per latent frame | video frames/s |")
    print("|---|---|---|")
    with torch.no_grad():
        for name, apply in settings:
            apply()
            per = timed_decode(vae, latents, args.blocks, sync)
            print(f"| {name} | {per:.4f} | {4 / per:.1f} |", flush=True)


if __name__ == "__main__":
    main()
