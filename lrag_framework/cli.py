"""The ``lrag`` command line. Heavy modules are imported inside each command."""
from __future__ import annotations

import argparse
import os
import sys


def _run(args) -> int:
    from .runner import run_cli

    return run_cli(args.config, args.set, compare=args.compare, prompts=args.prompt,
                   image=args.image, video=args.video)


def _validate(args) -> int:
    from .config import validate_cli

    return validate_cli(args.config, args.set)


def _plugins(args) -> int:
    from .plugins import plugins_report

    print(plugins_report(as_json=args.json, kind=args.kind))
    return 0


def _collect_latents(args) -> int:
    from .training.corpus import collect_latents_cli

    return collect_latents_cli(args.config, args.set)


def _train_embedder(args) -> int:
    from .training.trainer import train_embedder_cli

    return train_embedder_cli(args.config, args.set)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(name, help, required=True):
        p = sub.add_parser(name, help=help)
        p.add_argument("config", nargs=None if required else "?", help="YAML or JSON config")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field (dotted key, YAML value); repeatable")
        return p

    p = with_config("run", "generate videos (no config: the built-in default)", required=False)
    p.add_argument("--compare", action="store_true",
                   help="run native and retrieval on the same noise, side by side")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="a text prompt (one video each; repeatable): replaces conditionings")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--image", metavar="PATH", help="start every video from this image")
    start.add_argument("--video", metavar="PATH", help="continue this video")
    p.set_defaults(func=_run)
    with_config("validate", "report every error of a run config at once").set_defaults(
        func=_validate)
    p = sub.add_parser("plugins", help="list components by kind and broken plugins")
    p.add_argument("--json", action="store_true")
    p.add_argument("--kind", choices=["backbone", "retriever", "embedder", "loss"])
    p.set_defaults(func=_plugins)
    with_config("collect-latents", "write clean latents of a backbone's videos").set_defaults(
        func=_collect_latents)
    with_config("train-embedder", "train a retrieval embedder on a latent corpus").set_defaults(
        func=_train_embedder)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # the reader left (`lrag plugins | head -1`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 1


if __name__ == "__main__":
    sys.exit(main())
