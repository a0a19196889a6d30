"""The configuration reference (``docs/config.md``), generated from the pydantic schemas.

Sections: the run config (``lrag run``), the latent corpus (``lrag collect-latents``), embedder
training (``lrag train-embedder``), then the params of every built-in component (the
``lrag-framework`` distribution in the registry; the core names no plugin). Regenerate with
``python -m lrag_framework.config_reference docs/config.md``; a test checks the file is current.
"""
from __future__ import annotations

import json
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

HEADER = """# Configuration reference

Generated from the pydantic schemas by `python -m lrag_framework.config_reference docs/config.md`
(`tests/test_config_reference.py` fails when this file is out of date). Every section rejects
unknown fields. A component section is `{name, params}`: `name` picks a registered component
(`distribution:name` to pick among duplicates), `params` are validated by that component's own
model, listed under [Component params](#component-params) for the built-ins.
"""


def _type(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return f"`{json.dumps(value)}`"


def _constraints(field) -> str:
    names = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "min length"}
    found = []
    for meta in field.metadata:
        for attr, sign in names.items():
            if getattr(meta, attr, None) is not None:
                found.append(f"{sign} {getattr(meta, attr)}")
    return "; ".join(found)


def _nested(annotation) -> list[type[BaseModel]]:
    args = typing.get_args(annotation) or (annotation,)
    return [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]


def model_table(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Markdown rows of ``model`` and, after it, of every nested model (dotted names)."""
    lines = ["| field | type | default | constraints | description |",
             "| --- | --- | --- | --- | --- |"]
    nested = []
    for name, field in model.model_fields.items():
        desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        subs = [s for s in _nested(field.annotation)
                if s.__name__ not in ("ComponentConfig", "LossConfig")]
        default = _default(field) if not subs or field.default is None else "see below"
        lines.append(f"| `{prefix}{name}` | {_type(field.annotation)} | {default} | "
                     f"{_constraints(field)} | {desc} |")
        nested += [(f"{prefix}{name}.", sub) for sub in subs]
    out = [*lines, ""]
    for sub_prefix, sub in nested:
        out += [f"`{sub_prefix.rstrip('.')}` ({sub.__name__}):", "", *model_table(sub, sub_prefix)]
    return out


def render() -> str:
    from .config import ComponentConfig, RunConfig
    from .plugins import build_registry, _entry_point_plugins, canonical, BUILTIN
    from .training.components import LossConfig
    from .training.corpus import CorpusConfig
    from .training.trainer import TrainConfig

    out = [HEADER]
    for title, model, what in (
            ("Run (`lrag run`, `lrag validate`)", RunConfig, "RunConfig"),
            ("Latent corpus (`lrag collect-latents`)", CorpusConfig, "CorpusConfig"),
            ("Embedder training (`lrag train-embedder`)", TrainConfig, "TrainConfig")):
        out += [f"## {title}", "", f"`{what}`:", "", *model_table(model)]
    out += ["## Component sections", "", "`{name, params}` (ComponentConfig):", "",
            *model_table(ComponentConfig),
            "A loss section, in `losses` of the training config (LossConfig):", "",
            *model_table(LossConfig)]
    builtins = [p for p in _entry_point_plugins() if canonical(p[2]) == BUILTIN]
    registry = build_registry(builtins)
    out += ["## Component params", "",
            "The built-in components; a third-party plugin documents its own.", ""]
    for kind in ("backbone", "embedder", "retriever", "loss"):
        by_model: dict[object, list[str]] = {}
        for entry in registry.entries(kind):
            by_model.setdefault(entry.params_model, []).append(entry.name)
        for model, names in by_model.items():
            title = ", ".join(f"`{n}`" for n in names)
            out += [f"### {kind} {title}", ""]
            if model is None:
                out += ["Takes no params.", ""]
            else:
                doc = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
                doc = doc.replace("``", "`")
                out += [f"{model.__name__}: {doc}" if doc else f"{model.__name__}:", "",
                        *model_table(model)]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lrag_framework.config_reference",
                                     description="Write the configuration reference (Markdown).")
    parser.add_argument("path", type=Path, help="the file to write, e.g. docs/config.md")
    parser.parse_args(argv).path.write_text(render())


if __name__ == "__main__":
    main()
