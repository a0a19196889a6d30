"""lrag: retrieval-augmented autoregressive long video generation.

Exit codes: 0 done, 1 the command failed while running or the machine refused (a full disk, a
read-only file system; the error says what was kept), 2 bad input (config, files, plugins:
nothing was started), 130 interrupted. Results go to stdout,
errors and progress bars to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

OK, FAILED, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130


def _input_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean bad input: printed as one line, no traceback."""
    from .config import ConfigError
    from .generation.memory import MemoryBudgetError
    from .interfaces import ComponentError
    from .plugins import PluginError

    return ConfigError, ComponentError, MemoryBudgetError, PluginError


def _error(message) -> None:
    print(f"error: {message}", file=sys.stderr)


def _progress(mode: str, total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc=mode, file=sys.stderr)


def _video_progress(desc: str, total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc=desc, file=sys.stderr)


# ---------------------------------------------------------------------------- lrag run

def format_summary(summary: dict) -> str:
    """The run's console table: one row per mode."""
    rows = [("mode", "streams", "frames", "seconds", "frames/s", "blocks w/ retrieval",
             "PSNR dB", "PSNR loop-closure", "gain loop-closure", "precision@K",
             "of ceiling")]

    def num(v):
        return "-" if v is None else f"{v:.2f}"

    for mode, s in summary["modes"].items():
        rows.append((mode, str(s["streams"]), str(s["frames"]), f"{s['seconds']:.2f}",
                     f"{s['frames_per_second']:.1f}", str(s["blocks_retrieved"]),
                     num(s.get("mean_psnr")), num(s.get("mean_psnr_loop_closure")),
                     num(s.get("gain_loop_closure_db")), num(s.get("precision_at_k")),
                     num(s.get("precision_of_ceiling"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if any(s.get("mean_psnr") is not None for s in summary["modes"].values()):
        lines.append("PSNR against the ground truth on generated frames; loop-closure frames: "
                     "blocks with an eligible frame of the same place; gain: retrieval minus "
                     "native, paired (docs/results.md)")
    if len(summary["modes"]) == 2:
        lines.append("seconds: one run of each mode on this machine (noisy on a busy one); "
                     "speed ratios: benchmarks/ (docs/benchmarks.md)")
    for mode, s in summary["modes"].items():
        dropped = s.get("memory", {}).get("kv_dropped_frames", 0)
        if dropped:
            lines.append(f"{mode}: the K/V memory holds {s['memory']['kv_capacity_frames']} "
                         f"frames per stream and dropped the K/V of {dropped} frames (still "
                         f"indexed, no longer retrievable): raise memory.budget_gb or set "
                         f"memory.storage=float8 to keep them")
    return "\n".join(lines)


def run_overrides(args) -> list[str]:
    """``--set`` plus the shorthands ``--compare``, ``--prompt``, ``--image``, ``--video``."""
    extra = ["compare=true"] if args.compare else []
    if args.prompt:
        extra.append(f"conditionings={json.dumps(list(args.prompt), ensure_ascii=False)}")
    if args.image or args.video:
        source = {"source": "image", "path": args.image} if args.image else \
            {"source": "video", "path": args.video}
        extra.append(f"prefix={json.dumps(source, ensure_ascii=False)}")
    return list(args.set) + extra


def _run(args) -> int:
    from .distributed import world_from_env
    from .files import os_error_text
    from .outputs.run_dir import run, stop_message, stopped_run
    from .outputs.suite_dir import is_suite_dir

    if args.prompts or (args.resume and is_suite_dir(args.resume)):
        return _suite(args)
    if world_from_env().size > 1:
        raise _config_error("under torchrun, lrag run shards a suite: give --prompts FILE")
    try:
        result = run(args.config, run_overrides(args), progress=_progress, resume=args.resume)
    except BaseException as err:  # noqa: BLE001 - a stop after the first block: one line
        if stopped_run(err) is None:
            if isinstance(err, KeyboardInterrupt):
                _error("interrupted before the first block; nothing was kept")
                return INTERRUPTED
            if isinstance(err, OSError) and not isinstance(err, BrokenPipeError):
                _error(f"run stopped before its first block was saved, nothing was kept: "
                       f"{os_error_text(err)}")
                return FAILED
            raise
        _error(stop_message(err))
        return INTERRUPTED if isinstance(err, KeyboardInterrupt) else FAILED
    if result.already_complete:
        print(f"{result.run_dir} is already complete: nothing to resume")
        return OK
    print(format_summary(result.summary))
    for mode, what in result.summary.get("resumed", {}).items():
        print(f"resumed {mode}: " + ("kept (finished before)" if what == "kept" else
                                     f"{what['batches_kept']} batches kept, "
                                     f"{what['blocks_fed_back']} saved blocks fed back in "
                                     f"{what['feed_back_seconds']:.2f} s"))
    print(f"run directory: {result.run_dir}")
    return OK


def _config_error(message: str):
    from .config import ConfigError

    return ConfigError([message])


def format_suite_summary(summary: dict) -> str:
    """A suite's console lines: counts, then one line per failed video."""
    lines = [f"suite: {summary['items']} items, {summary['videos']} videos: {summary['ok']} ok, "
             f"{summary['failed']} failed ({summary['skipped_complete']} already complete), "
             f"{summary['world_size']} process(es), {summary['frames_per_second']:.1f} frames/s"]
    lines += [f"  failed: {f['item']} sample {f['sample']} {f['mode']}: {f['reason']}"
              for f in summary["failures"]]
    return "\n".join(lines)


def _suite(args) -> int:
    """``--prompts`` (a suite, sharded under torchrun) or ``--resume`` of a suite."""
    from .distributed import session, world_from_env
    from .outputs.suite_dir import SuiteStopped, run_suite

    if args.prompt and args.prompts:
        raise _config_error("give --prompt or --prompts, not both")
    if args.resume and (args.prompts or args.prompt or args.config):
        raise _config_error("--resume RUN_DIR takes the config and prompts of the run "
                            "directory: give neither CONFIG, --prompt nor --prompts")
    world = world_from_env()
    device = _suite_device(args)
    try:
        with session(world, device):
            result = run_suite(args.config, args.prompts, run_overrides(args),
                               resume=args.resume, world=world,
                               progress=_video_progress if world.main else None)
    except SuiteStopped as err:
        _error(f"[rank {world.rank}] {err}" if world.size > 1 else err)
        return INTERRUPTED if err.interrupted else FAILED
    if result is None:  # not rank 0: rank 0 reports
        return OK
    print(format_suite_summary(result.summary))
    print(f"run directory: {result.run_dir}")
    return FAILED if result.summary["failed"] else OK


def _suite_device(args) -> str:
    """The device the process group is opened for (the config's, as overridden)."""
    from .config import apply_overrides, read_config

    source = f"{args.resume}/config.yaml" if args.resume else args.config
    return str(apply_overrides(read_config(source), run_overrides(args)).get("device", "auto"))


def config_kind(source) -> str:
    """``run``, ``collect-latents`` or ``train-embedder``, from a config's top-level keys."""
    from .config import read_config

    keys = set(read_config(source)) if source is not None else set()
    if {"corpus", "losses"} & keys:
        return "train-embedder"
    if {"out_dir", "shard_size"} & keys or ("run" in keys and "backbone" not in keys):
        return "collect-latents"
    return "run"


def _validate(args) -> int:
    """Every check its command makes before starting (docs/resume.md, "lrag validate")."""
    kind = args.kind or config_kind(args.config)
    if kind == "train-embedder":
        from .training.trainer import load_train_config

        cfg = load_train_config(args.config, args.set)
        print(f"{args.config}: ok (train-embedder: {cfg.embedder.name}, "
              f"{len(cfg.losses)} losses)")
        return OK
    if kind == "collect-latents":
        from .training.corpus import load_corpus_config

        load_corpus_config(args.config, args.set)
        print(f"{args.config}: ok (collect-latents)")
        return OK
    from .outputs.run_dir import check_run

    cfg = check_run(args.config, run_overrides(args))
    print(f"{args.config}: ok ({cfg.backbone.name}, {len(cfg.conditionings)} conditionings, "
          f"{cfg.generation.num_frames} frames)")
    return OK


def _plugins(args) -> int:
    from .plugins import plugins_report

    print(plugins_report(as_json=args.json, kind=args.kind))
    return OK


# ---------------------------------------------------------------------------- training

def _collect_latents(args) -> int:
    from tqdm import tqdm

    from .training.corpus import collect_latents, load_corpus_config

    cfg = load_corpus_config(args.config, args.set)
    counts = collect_latents(cfg, progress=lambda total: tqdm(
        total=total, unit="video", desc="collect-latents", file=sys.stderr))
    print(f"{counts['out_dir']}: {counts['videos']} videos in {counts['shards']} shards "
          f"({counts['written']} written, {counts['skipped']} already there)")
    return OK


def _train_embedder(args) -> int:
    from tqdm import tqdm

    from .training.trainer import load_train_config, train_embedder

    cfg = load_train_config(args.config, args.set)
    result = train_embedder(cfg, progress=lambda total, initial: tqdm(
        total=total, initial=initial, unit="step", desc="train-embedder", file=sys.stderr))
    print(f"trained to step {result['step']}; best validation loss {result['best_val']}")
    for name, value in result.get("retrieval", {}).get("own_video_top1", {}).items():
        print(f"  own-video top-1  {name:<28} {value:.3f}")
    print(f"run directory: {result['run_dir']}")
    return OK


# ---------------------------------------------------------------------------- lrag eval

def _eval(args) -> int:
    """0 when at least one metric ran, 2 when none could."""
    from .evaluation.config import load_eval_config
    from .evaluation.console import format_report
    from .evaluation.evaluate import evaluate_runs
    from .evaluation.run_reader import RunDirError

    extra = [f"device={args.device}"] if args.device else []
    try:
        report = evaluate_runs(args.run_dirs, load_eval_config(args.config, args.set + extra),
                               args.output)
    except RunDirError as err:
        _error(err)
        return BAD_INPUT
    print(format_report(report))
    return OK if any(r["metrics_ran"] for r in report["runs"]) else BAD_INPUT


# ---------------------------------------------------------------------------- the parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lrag", description="Retrieval-augmented autoregressive long video generation.",
        epilog="exit codes: 0 done, 1 failed while running, 2 bad input, 130 interrupted")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(name, help, required=True):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("config", nargs=None if required else "?", help="YAML or JSON config")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field (dotted key, YAML value); repeatable")
        return p

    def with_run_shorthands(p):
        p.add_argument("--compare", action="store_true",
                       help="run native and retrieval on the same noise, side by side")
        p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                       help="a text prompt (one video each; repeatable): replaces conditionings")
        start = p.add_mutually_exclusive_group()
        start.add_argument("--image", metavar="PATH", help="start every video from this image")
        start.add_argument("--video", metavar="PATH", help="continue this video")
        return p

    p = with_run_shorthands(with_config("run", "generate videos (no config: the built-in "
                                        "default)", required=False))
    p.add_argument("--prompts", metavar="FILE",
                   help="a prompt suite (text, one prompt a line, or a YAML/JSON list of "
                        "items; docs/suites.md): replaces conditionings; sharded under torchrun")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="finish an interrupted run (a config or --set, if given, must be the "
                   "run's; docs/resume.md) or suite (complete videos skipped; docs/suites.md)")
    p.set_defaults(func=_run)
    p = with_run_shorthands(with_config(
        "validate", "run every check of a run, collect-latents or train-embedder config "
        "without running it (no config: the built-in default)", required=False))
    p.add_argument("--kind", choices=["run", "collect-latents", "train-embedder"],
                   help="default: from the config's keys")
    p.set_defaults(func=_validate)
    p = sub.add_parser("plugins", help="list components by kind and broken plugins")
    p.add_argument("--json", action="store_true")
    p.add_argument("--kind", choices=["backbone", "retriever", "embedder", "loss"])
    p.set_defaults(func=_plugins)
    with_config("collect-latents", "write clean latents of a backbone's videos").set_defaults(
        func=_collect_latents)
    with_config("train-embedder", "train a retrieval embedder on a latent corpus").set_defaults(
        func=_train_embedder)
    p = sub.add_parser("eval", help="long-video metrics of run directories (docs/eval.md)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--config", help="eval config (YAML or JSON)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an eval config field; repeatable")
    p.add_argument("--device", help="auto, cpu or cuda[:N] (default: the config's, auto)")
    p.add_argument("--output", help="also write the comparison of all runs to this JSON file")
    p.set_defaults(func=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        _error("interrupted; complete files were kept (checkpoints, shards), partial ones "
               "carry .partial in their name")
        return INTERRUPTED
    except BrokenPipeError:  # the reader left (`lrag plugins | head -1`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return FAILED
    except _input_errors() as err:
        _error(err)
        return BAD_INPUT
    except OSError as err:  # the machine refused (a full disk, a read-only file system)
        from .files import os_error_text

        _error(os_error_text(err))
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
