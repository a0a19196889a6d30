"""What retrieval does in the procedural world, measured against ground truth (docs/results.md).

For held-out worlds (revisit camera paths, 12 ground-truth prefix frames, then 192 generated
frames = 16x the 12-frame training clip), the shipped generators (``builtin-contiguous``: trained
on contiguous windows only, the paper's setting; ``builtin-planned``: also trained on planned
context and one-block rollouts of its own; ``builtin``: then on three-block rollouts) or any
weights file, and each retrieval configuration, runs native and retrieval on the same noise
and prints markdown tables of:
- PSNR against the ground-truth frame over the first 12 / 48 / 192 generated frames (1x, 4x, 16x
  the training clip; generation is causal, so the first N frames of the long run are the short
  run), mean ± std over worlds, and over loop-closure frames (16x);
- the paired gain of retrieval over native per world (same noise) on loop-closure frames and on
  all generated frames, mean ± std over worlds;
- retrieval precision@K, the precision ceiling and their ratio;
- avg_pool's precision@K on ground-truth frames (what a generator that never drifts would give);
- with ``--oracle``, a row per generator whose retriever is perfect (the eligible frames that
  overlap the block's ground-truth frame most): what the generator does with the right frames;
- per generator, the memory table of ``benchmarks/world_memory.py`` (seen and unseen pixels,
  the memory ceiling, consistency; ``--no-memory`` skips it);
- the default job's table: ``lrag run`` with no config (its two worlds, video off), both modes.

    python benchmarks/world_results.py [--worlds 5] [--frames 204] [--device cpu] [--oracle]
    python benchmarks/world_results.py --generators builtin --backbone-params '{"steps": [1.0]}'
"""
from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import torch
from torch import Tensor

import lrag_framework
from lrag_framework.generation.engine import Engine, EngineOptions, stream_generator
from lrag_framework.generation.plan import Geometry
from lrag_framework.outputs.report import evaluate, loop_closure_frames, precision_ceiling

PREFIX = 12
GENERATORS = {"builtin-contiguous": "trained on contiguous windows (the paper's setting)",
              "builtin-planned": "trained on planned context + one-block rollouts",
              "builtin": "trained on planned context + three-block rollouts (the default)"}
CONFIGS = {  # the row names of docs/results.md (retrieved frames at position 0 unless named)
    "avg_pool, fill, K=3": {"placement": "fill", "k": 3, "retrieved_position": "zero"},
    "avg_pool, fill, K=6": {"placement": "fill", "k": 6, "retrieved_position": "zero"},
    "avg_pool, reference, K=6 (public)": {"placement": "reference", "k": 6,
                                          "retrieved_position": "zero"},
    "avg_pool, extend, K=3": {"placement": "extend", "k": 3, "retrieved_position": "zero"},
    "avg_pool, fill, K=3, before_local": {"placement": "fill", "k": 3,
                                          "retrieved_position": "before_local"},
    "pose, fill, K=3 (the default job)": {"placement": "fill", "k": 3,
                                          "retrieved_position": "zero",
                                          "embedder": {"name": "pose"}},
    "pose, fill, K=6": {"placement": "fill", "k": 6, "retrieved_position": "zero",
                        "embedder": {"name": "pose"}},
    "pose, reference, K=6": {"placement": "reference", "k": 6, "retrieved_position": "zero",
                             "embedder": {"name": "pose"}},
    "pose, extend, K=3": {"placement": "extend", "k": 3, "retrieved_position": "zero",
                          "embedder": {"name": "pose"}},
    "pose + avg_pool 0.3, fill, K=3": {
        "placement": "fill", "k": 3, "retrieved_position": "zero",
        "embedder": {"name": "pose", "params": {"latent_weight": 0.3}}},
}


def run_one(weights: str, retrieval: dict, worlds: list[int], frames: int, root: str,
            device: str, params: dict | None = None) -> dict:
    retrieval = dict(retrieval)
    embedder = retrieval.pop("embedder", {"name": "avg_pool"})
    cfg = {"name": "results",
           "backbone": {"name": "tiny", "params": {"weights": weights, **(params or {})}},
           "embedder": embedder, "retrieval": {"enabled": True, "recency": 5, **retrieval},
           "generation": {"num_frames": frames, "seed": 0, "batch_size": len(worlds)},
           "conditionings": [{"world": w, "path": "revisit"} for w in worlds],
           "prefix": {"source": "reference", "frames": PREFIX}, "compare": True,
           "output": {"root": root, "video": False, "save_latents": False}, "device": device,
           "dtype": "float32"}  # as on a CPU, and as the oracle rows
    result = lrag_framework.run(cfg)
    return json.loads((result.run_dir / "metrics.json").read_text())


class OracleEngine(Engine):
    """The engine with a perfect retriever: the K eligible frames that overlap the block's
    ground-truth frame most (``overlaps`` [B, T, T]); a diagnostic, not a plugin."""

    def __init__(self, *args, overlaps: Tensor, **kwargs):
        super().__init__(*args, **kwargs)
        self.overlaps = overlaps

    def _retrieve(self, query, memory, start, segments):
        b = segments.shape[0]
        candidates = self.g.eligible(start, memory.has_kv()).nonzero().flatten()
        entry = {"block_start": start, "query_frame": start - 1, "eligible": len(candidates),
                 "ids": [[] for _ in range(b)]}
        if len(candidates):
            k = min(self.g.k, len(candidates))
            for s in range(b):
                top = self.overlaps[s, start, candidates].topk(k).indices
                entry["ids"][s] = sorted(candidates[top].tolist())
        return entry["ids"], entry


def run_oracle(weights: str, worlds: list[int], frames: int, refs: list, device: str,
               native: bool = False, params: dict | None = None) -> dict:
    """Metrics of the fill, K = 3 run with a perfect retriever (same noise as ``lrag run``);
    with ``native`` those of the native run too (mode -> metrics)."""
    from lrag_adapters.world import make_clip, overlap_matrix
    from lrag_framework.plugins import load_plugins

    registry = load_plugins()
    backbone = registry.build("backbone", "tiny", {"weights": weights, **(params or {})}
                              ).to(device)
    g = Geometry(3, 12, 1, 3, 5, "fill")
    overlaps = torch.stack([torch.from_numpy(overlap_matrix(t, t)) for t in
                            (make_clip(w, frames, "revisit")[2] for w in worlds)])
    engines = {"retrieval": OracleEngine(
        backbone, registry.build("embedder", "avg_pool", {}),
        registry.build("retriever", "exact", {}), EngineOptions(g), device, overlaps=overlaps)}
    if native:
        native_g = Geometry(3, 12, 1, 0, 5, "fill")  # k = 0: native
        engines["native"] = Engine(backbone, None, None, EngineOptions(native_g), device)
    items = [{"world": w, "path": "revisit"} for w in worlds]
    pixels, logs = {}, {}
    for mode, engine in engines.items():
        out = engine.generate(backbone.encode_conditioning(items, frames),
                              [stream_generator(0, i) for i in range(len(worlds))], frames,
                              prefix=torch.stack([r.latents[:PREFIX] for r in refs]))
        for entry in out.log:
            entry["streams"] = list(range(len(worlds)))
        pixels[mode], logs[mode] = out.latents, out.log
    return evaluate(pixels, logs, refs, g, PREFIX)


def references(worlds: list[int], frames: int) -> list:
    from lrag_framework.plugins import load_plugins

    bb = load_plugins().build("backbone", "tiny", {"weights": None, "dim": 32, "heads": 2,
                                                   "layers": 1})
    return [bb.reference({"world": w, "path": "revisit"}, frames) for w in worlds]


def stats(values) -> str:
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}" if values else "-"


def per_world(psnr: list[list[float]], masks: list[np.ndarray]) -> list[float | None]:
    return [float(np.mean(np.asarray(row)[m])) if m.any() else None
            for row, m in zip(psnr, masks)]


def row(name: str, m: dict, native: dict | None, masks: list[np.ndarray], n: int) -> str:
    """One table row: PSNR at 1x / 4x / 16x and on loop-closure frames, paired gains,
    precision."""
    psnr = m["psnr"]
    spans = [stats([np.mean(r[PREFIX:PREFIX + k]) for r in psnr]) for k in (12, 48, n)]
    loop = stats(per_world(psnr, masks))
    gains = ["-", "-"]
    if native is not None:
        diff = [list(np.asarray(a) - np.asarray(b)) for a, b in zip(psnr, native["psnr"])]
        gains = [stats(per_world(diff, masks)),
                 stats([np.mean(r[PREFIX:]) for r in diff])]
    p, ratio = m["precision_at_k"], m["precision_of_ceiling"]
    precision = "-" if p is None else f"{p:.3f}" + ("" if ratio is None else f" ({ratio:.2f})")
    return (f"| {name} | {' | '.join(spans)} | {loop} | {gains[0]} | {gains[1]} | {precision} "
            f"| {m['drift_db_per_100_frames']:.2f} |")


def ground_truth_precision(worlds: list[int], frames: int, embedder=None, k: int = 3
                           ) -> list[tuple[int, float, float, float]]:
    """Per world: precision@K of ``embedder`` (default avg_pool) when history and query are the
    ground-truth frames themselves (what a generator that never drifts would give), the chance
    level (all eligible frames) and the precision ceiling."""
    from lrag_framework.plugins import load_plugins

    embedder = embedder or load_plugins().build("embedder", "avg_pool", {})
    g = Geometry(3, 12, 1, k, 5, "fill")
    rows = []
    for w, ref in zip(worlds, references(worlds, frames)):
        with torch.no_grad():
            desc = torch.nn.functional.normalize(embedder.embed(ref.latents).float(), dim=-1)
        prec, chance = [], []
        for s in range(PREFIX, frames, 3):
            eligible = g.eligible(s, torch.ones(frames, dtype=torch.bool)).nonzero().flatten()
            if len(eligible):
                top = eligible[(desc[eligible] @ desc[s - 1]).topk(min(k, len(eligible))).indices]
                prec.append(ref.same_place[s, top].float().mean().item())
                chance.append(ref.same_place[s, eligible].float().mean().item())
        rows.append((w, float(np.mean(prec)), float(np.mean(chance)),
                     precision_ceiling(ref.same_place, g, PREFIX)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=PREFIX + 192)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--generators", nargs="+", default=list(GENERATORS),
                        help="shipped names or weights files (default: both shipped)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                        metavar="NAME", help="retrieval configurations (default: all)")
    parser.add_argument("--oracle", action="store_true",
                        help="add a row with a perfect retriever (fill, K = 3) per generator")
    parser.add_argument("--no-configs", action="store_true",
                        help="only the oracle rows (needs the native row: run without first)")
    parser.add_argument("--no-ground-truth", action="store_true",
                        help="skip the table of precision on ground-truth frames")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the memory tables (benchmarks/world_memory.py per generator)")
    parser.add_argument("--no-default-job", action="store_true",
                        help="skip the default job's table")
    parser.add_argument("--backbone-params", type=json.loads, default={}, metavar="JSON",
                        help='tiny backbone params over the weights, e.g. \'{"steps": [1.0]}\'')
    args = parser.parse_args()
    worlds = [1_000_001 + i for i in range(args.worlds)]
    n = args.frames - PREFIX
    root = tempfile.mkdtemp()
    refs = references(worlds, args.frames)
    print(f"worlds {worlds}; revisit paths; prefix {PREFIX} ground-truth frames, {n} generated; "
          f"PSNR in dB, mean ± std over worlds; gains paired per world (same noise)")
    for weights in args.generators:
        what = GENERATORS.get(weights, "weights file")
        print(f"\n### generator `{weights}`: {what}\n")
        print(f"| run | 1x (12) | 4x (48) | 16x ({n}) | loop closure (16x) | gain, loop closure "
              f"| gain, all | precision@K (of ceiling) | drift dB/100 |")
        print("|---|---|---|---|---|---|---|---|---|")
        native = None
        for name in [] if args.no_configs else args.configs:
            retrieval = CONFIGS[name]
            g = Geometry(3, 12, 1, retrieval["k"], 5, retrieval["placement"])
            masks = [loop_closure_frames(r.same_place, g, PREFIX).numpy() for r in refs]
            metrics = run_one(weights, retrieval, worlds, args.frames, root, args.device,
                              args.backbone_params)
            if native is None:
                native = metrics["native"]
                print(row("native", native, None, masks, n))
            print(row(name, metrics["retrieval"], native, masks, n), flush=True)
        if args.oracle:
            g = Geometry(3, 12, 1, 3, 5, "fill")
            masks = [loop_closure_frames(r.same_place, g, PREFIX).numpy() for r in refs]
            oracle = run_oracle(weights, worlds, args.frames, refs, args.device, native is None,
                                args.backbone_params)
            if native is None:
                native = oracle["native"]
                print(row("native", native, None, masks, n))
            print(row("perfect retriever, fill, K=3", oracle["retrieval"],
                      native, masks, n), flush=True)
    if not args.no_ground_truth:
        print("\n| world | avg_pool precision@3 on ground-truth frames | chance | ceiling |")
        print("|---|---|---|---|")
        for w, prec, chance, ceiling in ground_truth_precision(worlds, args.frames):
            print(f"| {w} | {prec:.3f} | {chance:.3f} | {ceiling:.3f} |")
    if not args.no_memory:
        from world_memory import memory_table

        for weights in args.generators:
            print()
            memory_table(weights, worlds, args.device, args.backbone_params)
    if not args.no_default_job:
        default_job(root)


def default_job(root: str) -> None:
    """The table of ``lrag run`` with no config (the default job), its video left out."""
    cfg = lrag_framework.load_config(None)
    result = lrag_framework.run(None, overrides=["output.video=false", f"output.root={root}"])
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    worlds = [c["world"] for c in cfg.conditionings]
    frames = cfg.generation.num_frames
    g = Geometry(3, 12, 1, cfg.retrieval.k, cfg.retrieval.recency, cfg.retrieval.placement)
    masks = [loop_closure_frames(r.same_place, g, PREFIX).numpy()
             for r in references(worlds, frames)]
    print(f"\n### the default job (`lrag run`: worlds {worlds}, {cfg.embedder.name}, "
          f"{cfg.retrieval.placement}, K = {cfg.retrieval.k}; mean ± std over its streams)\n")
    print(f"| run | 1x (12) | 4x (48) | 16x ({frames - PREFIX}) | loop closure (16x) | gain, loop "
          f"closure | gain, all | precision@K (of ceiling) | drift dB/100 |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(row("native", metrics["native"], None, masks, frames - PREFIX))
    print(row("retrieval", metrics["retrieval"], metrics["native"], masks, frames - PREFIX))


if __name__ == "__main__":
    main()
