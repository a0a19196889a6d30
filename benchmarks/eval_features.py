"""Feature extraction of ``lrag eval`` at the full public sizes (random weights), per extractor:
seconds per frame on a tiny-world mp4 frame (256 x 256) and a Wan frame (480 x 832); prints a
markdown table. Each model is saved in its public Hugging Face layout (CLIP as a whole CLIPModel,
with a one-layer text tower to save time) and loaded through the evaluation's own loading path, so
the full-size configs are checked too.

    python benchmarks/eval_features.py --frames 8          # CPU, a few minutes
    python benchmarks/eval_features.py --device cuda --frames 64
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
import transformers

from lrag_framework.evaluation.extractors import Extractor

TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
        "num_attention_heads": 2}
MODELS = {  # the public configurations (facebook/dino-vitb16, facebook/dinov2-base, openai/...)
    "dino": lambda: transformers.ViTModel(transformers.ViTConfig(qkv_bias=True)),
    "dinov2": lambda: transformers.Dinov2Model(transformers.Dinov2Config(image_size=518)),
    "clip_b32": lambda: transformers.CLIPModel(transformers.CLIPConfig(
        text_config=TEXT, vision_config={"patch_size": 32}, projection_dim=512)),
    "clip_l14": lambda: transformers.CLIPModel(transformers.CLIPConfig(
        text_config=TEXT, vision_config={"hidden_size": 1024, "intermediate_size": 4096,
                                         "num_hidden_layers": 24, "num_attention_heads": 16,
                                         "patch_size": 14}, projection_dim=768)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    sizes = {"world 256x256": (256, 256), "Wan 480x832": (480, 832)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, build in MODELS.items():
            folder = Path(tmp) / key
            with torch.random.fork_rng():
                torch.manual_seed(0)
                build().save_pretrained(folder)
            t0 = time.perf_counter()
            extractor = Extractor(key, folder, device)
            load = time.perf_counter() - t0
            params = sum(p.numel() for p in extractor.model.parameters()) / 1e6
            for name, (h, w) in sizes.items():
                frames = torch.rand(args.frames, 3, h, w) * 255
                extractor(frames[: args.batch])  # warm-up
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for i in range(0, args.frames, args.batch):
                    extractor(frames[i:i + args.batch])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                per_frame = (time.perf_counter() - t0) / args.frames
                rows.append((key, f"{params:.0f}M", name, f"{load:.1f}", f"{per_frame * 1e3:.0f}",
                             f"{1 / per_frame:.1f}"))
    print(f"device {device}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"{args.frames} frames, batch {args.batch}\n")
    print("| extractor | params | frames | load s | ms / frame | frames / s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
