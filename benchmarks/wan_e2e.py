"""End to end text-to-video with a Wan2.1-1.3B causal backbone: text encode + generate + streaming
VAE decode into an mp4, through ``run()``, with random full-size weights (DiT, umT5-XXL encoder,
VAE; timing does not depend on weights). The umT5 vocabulary is replaced by a synthetic
word-level tokenizer of the same size (tokenising is negligible next to the encoder).

    python benchmarks/wan_e2e.py                 # H100: 120 latent frames, retrieval on
    python benchmarks/wan_e2e.py --tiny          # CPU smoke check
    python benchmarks/wan_e2e.py --decoder vae taehv   # one row per decoder (TAEHV: random weights)
    python benchmarks/wan_e2e.py --decoder-device cuda:1   # the decoder on a second GPU
    python benchmarks/wan_e2e.py --vae-eager --no-cuda-graphs  # without the two fast paths

Prints one markdown table: text encode (cold: builds the 5.7B-parameter encoder, encodes, frees
it), the run's setup (DiT, VAE, warm-up block, compile), generation, decode + write, time to the
first frames on disk (from the start of generation, and from the start of the job), wall time.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

import lrag_framework
from lrag_adapters.wan.text_encoder import T5Config, TextEncoder

TINY_DIT = {"num_layers": 2, "dim": 64, "num_heads": 4, "ffn_dim": 128, "freq_dim": 32,
            "text_dim": 64, "text_len": 32, "latent_height": 8, "latent_width": 12}
TINY_T5 = {"vocab": 2048, "dim": 64, "dim_attn": 64, "dim_ffn": 96, "num_heads": 4,
           "num_layers": 2, "text_len": 32}
PROMPT = " ".join(f"w{i % 997}" for i in range(0, 120 * 37, 37))  # 120 words, ~121 tokens


def write_tokenizer(folder: Path, vocab: int) -> None:
    """A word-level tokenizer.json with umT5's special ids (pad 0, EOS 1, unk 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {f"w{i}": 3 + i for i in range(vocab - 3)}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--frames", type=int, default=None, help="latent frames (default 120)")
    parser.add_argument("--preset", default="self_forcing")
    parser.add_argument("--eager", dest="compile", action="store_false",
                        help="no torch.compile (the preset's default compiles on CUDA)")
    parser.add_argument("--decoder", choices=["vae", "taehv"], nargs="+", default=["vae"])
    parser.add_argument("--vae-eager", dest="vae_compile", action="store_false",
                        help="no torch.compile of the VAE decoder (the default compiles on CUDA)")
    parser.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                        help="no CUDA graphs over the DiT passes (the default replays them)")
    parser.add_argument("--decoder-device", default=None,
                        help="decode on this device (e.g. cuda:1; docs/suites.md)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    if not args.tiny and not cuda:
        parser.error("the full-size benchmark needs CUDA; use --tiny for a CPU smoke check")
    frames = args.frames or (24 if args.tiny else 120)  # tiny: long enough to retrieve
    t5 = T5Config(**TINY_T5) if args.tiny else T5Config()
    device = "cuda" if cuda else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_tokenizer(tmp / "tokenizer", t5.vocab)
        job = time.perf_counter()
        encoder = TextEncoder(None, tmp / "tokenizer", t5, device,
                              torch.bfloat16 if cuda else torch.float32, tmp / "cache")
        encoder.encode([PROMPT])
        encoder.free()
        if cuda:
            torch.cuda.synchronize()
        text_s = time.perf_counter() - job
        print(f"# wan_e2e: {args.preset}{' (tiny)' if args.tiny else ''}, random weights, "
              f"{torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}, "
              f"{platform.python_version()}, compile {args.compile}, vae_compile "
              f"{args.vae_compile}, cuda_graphs {args.cuda_graphs}, "
              f"decoder_device {args.decoder_device or 'same'}, "
              f"{frames} latent frames = {4 * frames - 3} video frames, "
              f"retrieval K=6 R=5\n")
        print("| decoder | text encode s | setup s | generate s | decode+write s | first frame s "
              "(gen) | first frame s (job) | wall s (job) | end-to-end video FPS | peak GPU GiB "
              "| mp4 MiB |")
        print("|" + "---|" * 11)
        for decoder in args.decoder:
            params = {"random_init": True, "tokenizer_dir": str(tmp / "tokenizer"),
                      "prompt_cache": str(tmp / "cache"), "compile": args.compile,
                      "decoder": decoder, "vae_compile": args.vae_compile,
                      "cuda_graphs": args.cuda_graphs,
                      "decoder_device": args.decoder_device,
                      **({**TINY_DIT, "text_encoder_sizes": TINY_T5, "vae_dim": 8}
                         if args.tiny else {})}
            cfg = {"name": "wan_e2e", "backbone": {"name": args.preset, "params": params},
                   "retrieval": {"k": 6, "recency": 5, "placement": "reference"},
                   "generation": {"num_frames": frames, "window": 12, "sink": 1,
                                  "batch_size": 1},
                   "conditionings": [PROMPT],
                   "output": {"root": str(tmp / "runs"), "fps": 16, "video_scale": 1},
                   "device": device}
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            result = lrag_framework.run(cfg)
            wall = time.perf_counter() - start
            s = result.summary["modes"]["retrieval"]
            t = s["timings"]
            video = next((result.run_dir / "retrieval").glob("*.mp4"))
            setup = wall - t["total"] - t["decode_write"]
            first_job = text_s + setup + t["first_frame"]
            peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else 0.0
            print(f"| {decoder} | {text_s:.2f} | {setup:.2f} | {t['total']:.2f} | "
                  f"{t['decode_write']:.2f} | {t['first_frame']:.2f} | {first_job:.2f} | "
                  f"{text_s + wall:.2f} | "
                  f"{(4 * frames - 3) / (t['total'] + t['decode_write']):.1f} | {peak:.2f} | "
                  f"{video.stat().st_size / 2 ** 20:.1f} |", flush=True)


if __name__ == "__main__":
    main()
