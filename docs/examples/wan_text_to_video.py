"""Text to a streamed mp4 with a Wan2.1 causal backbone (preset ``longlive``): a prompt schedule,
an image start frame and retrieval kept inside each prompt's segment, through
``lrag_framework.run``.

    python docs/examples/wan_text_to_video.py [--out DIR] [--frames N]

No weights can be downloaded here, so the script first writes TINY RANDOM checkpoints in the
public layout into a temporary folder: a Wan2.1 base folder (``config.json`` +
``diffusion_pytorch_model.safetensors``, the umT5 encoder ``.pth`` and its ``google/umt5-xxl``
tokenizer folder, ``Wan2.1_VAE.pth``) and LongLive's generator and LoRA ``.pt`` files. The video
is therefore coloured noise; what the script shows is the API, the files and the run folder.
With the real files (``docs/backbones.md`` gives the download commands) the call is the same:
only the paths change and the tiny sizes (``TINY``, ``UMT5``, the LoRA rank) go; the preset's
defaults are Wan2.1-T2V-1.3B at 480 x 832 with ``checkpoints/longlive_base.pt`` +
``checkpoints/longlive_lora.pt``. That config is ``docs/examples/wan_text_to_video.yaml``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import lrag_framework

# Sizes of the tiny model (Wan2.1-T2V-1.3B: 30 layers, dim 1536, 12 heads, text 4096 x 512,
# latent 16 x 60 x 104, i.e. 480 x 832 pixels).
TINY = {"num_layers": 2, "dim": 32, "num_heads": 2, "ffn_dim": 48, "freq_dim": 16,
        "text_dim": 24, "text_len": 16, "latent_channels": 16, "latent_height": 6,
        "latent_width": 10}  # pixels 48 x 80
UMT5 = {"vocab": 128, "dim": 24, "dim_attn": 24, "dim_ffn": 32, "num_heads": 4, "num_layers": 2,
        "text_len": 16}
LORA_RANK = 4
PROMPTS = ["a red fox walks on the grass", "the fox runs into the snow",
           "the fox sleeps in the snow"]


def write_tokenizer(folder: Path) -> None:
    """A tiny umT5-like tokenizer folder: Unigram over a few words and the letters, Metaspace
    pre-tokenizer, ``</s>`` appended, pad 0 / EOS 1 / unk 2 (as google/umt5-xxl)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    folder.mkdir(parents=True)
    words = sorted({w for p in PROMPTS for w in p.split()})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [(f"▁{w}", -2.0) for w in words] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}))


def random_dit_state(seed: int) -> dict[str, torch.Tensor]:
    """Wan's initialisation at the TINY sizes, through the registry like any backbone."""
    from lrag_framework.plugins import load_plugins

    backbone = load_plugins().build("backbone", "longlive",
                                    {"random_init": True, "init_seed": seed, **TINY})
    return backbone.to("cpu").model.state_dict()


def write_base_folder(base: Path) -> None:
    """``wan_models/Wan2.1-T2V-1.3B`` as ``hf download`` lays it out, at the TINY sizes."""
    from lrag_adapters.wan import text_encoder as te
    from lrag_adapters.wan.vae import VAEConfig, random_vae
    from safetensors.torch import save_file

    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps(
        {"_class_name": "WanModel", "dim": TINY["dim"], "eps": 1e-6, "ffn_dim": TINY["ffn_dim"],
         "freq_dim": TINY["freq_dim"], "in_dim": 16, "model_type": "t2v",
         "num_heads": TINY["num_heads"], "num_layers": TINY["num_layers"], "out_dim": 16,
         "text_len": TINY["text_len"]}))
    save_file(random_dit_state(seed=0), str(base / "diffusion_pytorch_model.safetensors"))
    torch.save(te.random_umt5(te.T5Config(**UMT5), seed=1).state_dict(), base / te.CHECKPOINT)
    write_tokenizer(base / te.TOKENIZER_DIR)
    torch.save(random_vae(VAEConfig(dim=8), seed=2).state_dict(), base / "Wan2.1_VAE.pth")


def write_longlive_checkpoints(folder: Path) -> tuple[Path, Path]:
    """LongLive's generator (``{"generator": {"model.<Wan key>": ...}}``) and its peft LoRA
    (``{"generator_lora": {"base_model.model.blocks.N.<linear>.lora_A/B.weight": ...}}``)."""
    folder.mkdir(parents=True)
    state = random_dit_state(seed=3)
    generator = folder / "longlive_base.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in state.items()}}, generator)
    gen = torch.Generator().manual_seed(4)
    lora = {}
    linears = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q",
               "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"]
    for i in range(TINY["num_layers"]):
        for name in linears:
            out_dim, in_dim = state[f"blocks.{i}.{name}.weight"].shape
            key = f"base_model.model.blocks.{i}.{name}"
            lora[f"{key}.lora_A.weight"] = 0.1 * torch.randn(LORA_RANK, in_dim, generator=gen)
            lora[f"{key}.lora_B.weight"] = 0.1 * torch.randn(out_dim, LORA_RANK, generator=gen)
    adapter = folder / "longlive_lora.pt"
    torch.save({"generator_lora": lora}, adapter)
    return generator, adapter


def write_start_image(path: Path) -> None:
    """A 120 x 240 picture (2:1, wider than the 48 x 80 frames: cover-resize, centre crop)."""
    from PIL import Image

    y, x = np.mgrid[0:120, 0:240] / np.array([120, 240])[:, None, None]  # [2, 120, 240]
    rgb = np.stack([0.3 + 0.6 * x, 0.8 - 0.5 * y, 0.4 + 0.3 * np.sin(8 * x)], axis=-1)
    rgb[(x - 0.5) ** 2 * 4 + (y - 0.6) ** 2 < 0.04] = [0.9, 0.4, 0.1]  # an orange disc
    Image.fromarray((rgb.clip(0, 1) * 255).astype(np.uint8)).save(path)


def schedule(frames: int) -> list[dict]:
    """The three prompts over thirds of the video (a start inside a block takes effect at the
    next block boundary)."""
    return [{"start": i * (frames // 3), "prompt": p} for i, p in enumerate(PROMPTS)]


def config(files: Path, out: Path, frames: int) -> dict:
    """The run config: as wan_text_to_video.yaml apart from the paths, the sizes and a short
    video with a small window (so frames are evicted, and retrieved, within a few blocks)."""
    return {
        "name": "wan-t2v",
        "backbone": {"name": "longlive", "params": {
            "base_dir": str(files / "wan_models" / "Wan2.1-T2V-1.3B"),
            "generator_ckpt": str(files / "checkpoints" / "longlive_base.pt"),
            "lora_ckpt": str(files / "checkpoints" / "longlive_lora.pt"),
            "lora_rank": LORA_RANK, "lora_alpha": float(LORA_RANK),
            "text_encoder_sizes": UMT5, "prompt_cache": str(out / "prompt_cache"), **TINY}},
        "retrieval": {"k": 2, "recency": 1, "cross_segments": False},
        "generation": {"num_frames": frames, "window": 6, "seed": 0, "batch_size": 1},
        "conditionings": [schedule(frames)],  # one video; more items, more videos
        "prefix": {"source": "image", "path": str(out / "start.png")},
        "memory": {"policy": "thin"},  # the yaml adds storage: float8 (K/V in half the bytes)
        "output": {"root": str(out), "name": "wan_t2v", "fps": 16, "video_scale": 1},
        "device": "cpu",  # the yaml: auto (the GPU when there is one)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/wan_text_to_video", help="output folder (new)")
    parser.add_argument("--frames", type=int, default=40, help="latent frames, image included")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.frames < 10:
        parser.error(f"--frames must be at least 10 (three prompt segments), got {args.frames}")
    if out.exists() and any(out.iterdir()):
        parser.error(f"{out} is not empty: choose another --out")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    write_start_image(out / "start.png")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            files = Path(tmp)
            write_base_folder(files / "wan_models" / "Wan2.1-T2V-1.3B")
            write_longlive_checkpoints(files / "checkpoints")
            result = lrag_framework.run(config(files, out, args.frames))
    except BaseException:  # nothing left behind: a retry with the same --out works
        shutil.rmtree(out / "prompt_cache", ignore_errors=True)
        (out / "start.png").unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise

    mp4 = result.run_dir / "retrieval" / "stream_000.mp4"
    print("prompt schedule (requested starts; each takes effect at the next block start):")
    for segment, item in enumerate(schedule(args.frames)):
        print(f"  segment {segment}: frame {item['start']:>3}: {item['prompt']}")
    h, w = 8 * TINY["latent_height"], 8 * TINY["latent_width"]
    print(f"video: {mp4} ({1 + 4 * (args.frames - 1)} frames of {h} x {w} at 16 fps)")
    print(f"prompt embeddings cached in {out / 'prompt_cache'}: a run with the same prompts "
          f"and encoder skips umT5")
    print("retrieval log (retrieval.jsonl): candidates stay inside the block's prompt segment")
    print(f"{'block':>5}  {'segment':>7}  {'eligible':>8}  retrieved frames")
    log = [json.loads(line) for line in result.paths["retrieval_log"].read_text().splitlines()]
    for entry in log:
        print(f"{entry['block_start']:>5}  {entry['segment'][0]:>7}  {entry['eligible']:>8}  "
              f"{entry['ids'][0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
