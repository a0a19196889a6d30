"""Run configuration: pydantic models, file loading, ``--set`` overrides, validate-all.

Plugin sections are ``{name, params}``; the registry resolves ``name`` and the plugin's own params
model validates ``params``. ``validate`` collects every error (schema, unknown names, plugin
params) into one ``ConfigError`` before anything is built.
"""
from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

PLUGIN_SECTIONS = ("backbone", "embedder", "retriever")  # section name == plugin kind


class ConfigError(ValueError):
    """One or more configuration errors, all reported at once."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("invalid config:\n" + "\n".join(f"  - {e}" for e in errors))


class Strict(BaseModel):
    """Unknown keys are errors; numbers are not read from booleans or strings (``k: true``
    is an error, not k = 1)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ComponentConfig(Strict):
    """A plugin section: the registered name (or ``distribution:name``) and its params."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class RetrievalConfig(Strict):
    enabled: bool = True
    k: int = Field(6, ge=0, description="retrieval budget K (frames per block)")
    recency: int = Field(5, ge=0, description="recency guard R: most recently evicted frames "
                         "that may not be retrieved")
    placement: Literal["reference", "fill", "extend"] = Field(
        "fill", description="reference: public code (local part fixed by K); fill: local frames "
        "take the slots retrieval leaves empty; extend: retrieved frames on top of the window")
    retrieved_position: Literal["zero", "before_local"] = Field(
        "zero", description="temporal RoPE position of retrieved frames: 0 (public) or the slots "
        "just before the local frames")
    query: Literal["last_frame", "block_mean"] = "last_frame"
    cross_segments: bool = Field(True, description="with a prompt schedule: may a block retrieve "
                                 "frames generated under an earlier prompt")


class GenerationConfig(Strict):
    num_frames: int = Field(48, ge=1, description="latent frames per video, prefix included")
    frames_per_block: int | None = Field(None, ge=1, description="default: backbone preset")
    window: int | None = Field(None, ge=1, description="attention window in frames incl. sink "
                               "and the current block; default: backbone preset")
    sink: int | None = Field(None, ge=0, description="default: backbone preset")
    positions: Literal["slots", "absolute"] = Field(
        "slots", description="temporal RoPE positions: cache slots (the LongLive-RAG model) or "
        "absolute frame indices (the public native pipelines); docs/architecture.md")
    seed: int = Field(0, ge=0, lt=2 ** 63, description="noise seed (0 <= seed < 2**63)")
    batch_size: int = Field(4, ge=1, description="streams generated together")


class PrefixConfig(Strict):
    """Given start frames, entering cache and history as if generated.

    ``file``: a safetensors file with ``latents`` [F, C, H, W] or [S, F, C, H, W] (``kind:
    latents``) or ``pixels`` [F, 3, h, w] in [-1, 1] that the backbone encodes. ``image``: a
    picture (PNG, JPEG, ...), resized to cover the backbone's frame size, centre-cropped and
    encoded as the first latent frame. ``video``: the first frames of a video file (``frames``
    latent frames; default: as many as it holds), prepared and encoded the same way.
    ``reference``: the ground-truth frames the backbone derives from each stream's conditioning
    (``Backbone.reference``), e.g. a simulator's frames."""

    source: Literal["file", "image", "video", "reference"] = "file"
    path: str | None = None
    kind: Literal["latents", "pixels"] = "latents"
    frames: int | None = Field(None, ge=1, description="use the first N latent frames (default: "
                               "all)")

    @model_validator(mode="after")
    def _check_source(self):
        if self.source != "reference" and not self.path:
            raise ValueError(f"prefix.path is required with source: {self.source}")
        if self.source == "reference" and self.frames is None:
            raise ValueError("prefix.frames is required with source: reference")
        return self


class MemoryConfig(Strict):
    budget_gb: Annotated[float, Field(gt=0, allow_inf_nan=False, strict=False)] | Literal[
        "auto"] = Field(
        16.0, description="history K/V byte budget (all streams), or auto: storage and tier "
        "chosen so that every frame keeps its K/V (generation/budget.py; explicit storage/tier "
        "win), refused up front if no choice fits")
    policy: Literal["thin", "drop_oldest", "error"] = Field(
        "thin", description="when history K/V exceeds the budget, which evicted frames give up "
        "their K/V (they stay indexed but become ineligible): thin (keep an even spread over the "
        "whole history), drop_oldest, or error (stop before generating)")
    storage: Literal["auto", "float8"] = Field(
        "auto", description="K/V storage: the backbone's dtype, or float8 for history (e4m3 + "
        "per-frame scales, half the bytes of bf16; sink and local window stay exact)")
    tier: Literal["auto", "cpu"] = Field(
        "auto", description="where history K/V lives: the compute device, or host memory "
        "(pinned when computing on a GPU)")


class OutputConfig(Strict):
    root: str = "runs"
    name: str | None = Field(None, description="run directory name; default: timestamp + name")
    video: bool = True
    fps: int = Field(8, ge=1, le=240)
    video_scale: int = Field(4, ge=1, le=64, description="nearest-neighbour upscale of small "
                             "frames")
    save_latents: bool = True

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name):
        if name is None:
            return name
        if (not name or Path(name).name != name or name in (".", "..") or "\0" in name
                or "/" in name or "\\" in name):
            raise ValueError(f"{name[:60]!r} must be a plain folder name (it is created inside "
                             f"output.root)")
        if len(name.encode("utf-8", "surrogateescape")) > 255:
            raise ValueError(f"{len(name)} characters: a folder name holds at most 255 bytes")
        return name


class RunConfig(Strict):
    name: str = "run"
    backbone: ComponentConfig = ComponentConfig(name="tiny")
    embedder: ComponentConfig = ComponentConfig(name="avg_pool")
    retriever: ComponentConfig = ComponentConfig(name="exact")
    retrieval: RetrievalConfig = RetrievalConfig()
    generation: GenerationConfig = GenerationConfig()
    conditionings: list[Any] = Field(default_factory=lambda: [None], min_length=1,
                                     description="one raw conditioning per video (prompt "
                                     "embedding, actions, ...) as the backbone reads it")
    samples_per_conditioning: int = Field(1, ge=1)
    prefix: PrefixConfig | None = None
    memory: MemoryConfig = MemoryConfig()
    output: OutputConfig = OutputConfig()
    compare: bool = Field(False, description="also run native (no retrieval) on the same noise")
    device: str = Field("auto", description="auto: cuda when available, else cpu")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    disable_plugins: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_device(self):
        from .devices import device_error

        error = device_error(self.device)
        if error:
            raise ValueError(error)
        return self


class DuplicateKeyError(ValueError):
    """A mapping in a YAML text names a key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKeyError(f"key {key!r} appears twice "
                                        f"(line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str):
    """``yaml.safe_load`` that refuses a key given twice (instead of keeping the last)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def default_config_dict() -> dict:
    """The built-in default run config (a data file resolved through the registry)."""
    text = resources.files("lrag_framework").joinpath("defaults/default.yaml").read_text()
    return yaml.safe_load(text)


def read_config(source: str | Path | dict | BaseModel | None) -> dict:
    """A config as a plain dict from a path (YAML/JSON), a dict, a model, or None (default)."""
    if source is None:
        return default_config_dict()
    if isinstance(source, BaseModel):
        return source.model_dump()
    if isinstance(source, dict):
        return dict(source)
    if not isinstance(source, (str, Path)):
        raise ConfigError([f"config: expected a path, a dict, a RunConfig or None, got "
                           f"{type(source).__name__}"])
    path = Path(source)
    if not path.is_file():
        raise ConfigError([f"config file {path} not found"])
    try:
        data = (json.loads if path.suffix == ".json" else load_yaml)(
            path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path}: not UTF-8 text ({err.reason} at byte {err.start})"]) \
            from None
    except (yaml.YAMLError, json.JSONDecodeError, DuplicateKeyError) as err:
        raise ConfigError([f"{path}: cannot parse: {err}"]) from None
    except OSError as err:
        raise ConfigError([f"{path}: cannot read: {err.strerror or err}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: top level must be a mapping, got {type(data).__name__}"])
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict copy."""
    if isinstance(overrides, (str, bytes)):
        raise ConfigError([f"overrides: expected a list of KEY=VALUE strings, got the string "
                           f"{overrides!r}"])
    data = copy.deepcopy(data)  # tensors in conditionings stay tensors
    for item in list(overrides):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError([f"--set {item!r}: expected KEY=VALUE"])
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"--set {item!r}: {part} is not a section"])
        try:
            node[leaf] = load_yaml(raw)
        except (yaml.YAMLError, DuplicateKeyError) as err:
            raise ConfigError([f"--set {item!r}: cannot parse the value: "
                               f"{' '.join(str(err).split())}"]) from None
    return data


def tensor_record(value) -> dict:
    """What a config file records for a tensor value (a tensor conditioning): its shape, dtype
    and the sha256 of its bytes."""
    import torch

    data = value.detach().cpu().contiguous().view(-1).view(torch.uint8)
    return {"tensor": {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
                       "sha256": hashlib.sha256(data.numpy().tobytes()).hexdigest()}}


def config_record(cfg: BaseModel) -> dict:
    """A config as JSON-safe data (for config.yaml, resume checks): tensors become
    ``tensor_record``s."""
    def fallback(value):
        if hasattr(value, "detach") and hasattr(value, "shape"):
            return tensor_record(value)
        raise TypeError(f"cannot record a {type(value).__name__} in a config file")

    return cfg.model_dump(mode="json", fallback=fallback)


def config_differences(old: dict, new: dict, then: str = "in the run",
                       prefix: str = "") -> list[str]:
    """``key: OLD in the run, NEW now`` for every leaf that differs between two config records
    (``then`` names where the old one comes from): the one form of every refusal of a changed
    config (``lrag run --resume``, a suite's resume, a resumed ``collect-latents``)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, then, name + ".")
        elif a != b:
            out.append(f"{name}: {json.dumps(a)[:60]} {then}, {json.dumps(b)[:60]} now")
    return out


def validation_errors(err: ValidationError, prefix: str = "") -> list[str]:
    """One ``dotted.location: message`` line per pydantic error (the project's one format)."""
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        out.append(f"{loc or '<root>'}: {e['msg']}")
    return out


def validate(data: dict) -> RunConfig:
    """Validate a config dict fully (schema, plugin names, plugin params); raise one ConfigError."""
    from .plugins import load_plugins

    errors: list[str] = []
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        errors += validation_errors(err)
        cfg = None
    registry = load_plugins(disabled=tuple(data.get("disable_plugins") or ()))
    for section in PLUGIN_SECTIONS:
        comp = data.get(section, RunConfig.model_fields[section].default)
        comp = comp.model_dump() if isinstance(comp, BaseModel) else comp
        if not isinstance(comp, dict) or not isinstance(comp.get("name"), str):
            continue  # already reported by the schema
        errors += component_errors(registry, section, section, comp["name"],
                                   comp.get("params") or {})
    if errors:
        raise ConfigError(errors)
    return cfg


def component_errors(registry, kind: str, where: str, name: str, params: dict) -> list[str]:
    """The errors of one plugin section ``where``: an unknown name, or params its model
    refuses (one line each, as ``validation_errors``)."""
    from .plugins import PluginError

    try:
        registry.params(kind, name, params)
    except PluginError as err:
        return [f"{where}.name: {err}"]
    except ValidationError as err:
        return validation_errors(err, f"{where}.params")
    return []


def load_config(source=None, overrides: list[str] = ()) -> RunConfig:
    return validate(apply_overrides(read_config(source), overrides))
