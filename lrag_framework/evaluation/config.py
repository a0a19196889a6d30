"""The eval config: which metrics, where their weights are, the protocol's numbers.

Every field has a documented default (``docs/eval.md``); ``lrag eval --config FILE`` reads a
YAML/JSON mapping of these fields and ``--set key=value`` overrides single ones.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import ConfigError, apply_overrides, read_config

WEIGHT_METRICS = ("subject_consistency", "subject_consistency_clip2clip",
                  "background_consistency", "background_consistency_clip2clip",
                  "aesthetic_quality")
TORCHVISION_METRICS = ("imaging_quality", "dynamic_degree")
FREE_METRICS = ("gap_similarity", "psnr", "first_failure")
METRICS = WEIGHT_METRICS + TORCHVISION_METRICS + FREE_METRICS
MEASURES = ("psnr", "start_similarity", "subject_consistency", "background_consistency",
            "aesthetic_quality")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WeightsConfig(Strict):
    """Local weights; None: the standard cache folders (``docs/eval.md``). Never downloaded."""

    dino: str | None = Field(None, description="folder in the layout of facebook/dino-vitb16")
    dinov2: str | None = Field(None, description="folder in the layout of facebook/dinov2-base")
    clip_b32: str | None = Field(None, description="folder in the layout of "
                                 "openai/clip-vit-base-patch32")
    clip_l14: str | None = Field(None, description="folder in the layout of "
                                 "openai/clip-vit-large-patch14")
    aesthetic_head: str | None = Field(None, description="LAION sa_0_4_vit_l_14_linear.pth (or "
                                       "a safetensors file with the same keys)")


class FailureRule(Strict):
    """First-failure time: the first generated frame from which ``measure`` stays below
    ``threshold`` (for ``patience`` frames; None: to the end of the video)."""

    measure: Literal[MEASURES]
    threshold: float
    patience: int | None = Field(None, ge=1)


class EvalConfig(Strict):
    metrics: list[Literal[METRICS]] = Field(default_factory=lambda: list(METRICS))
    weights: WeightsConfig = WeightsConfig()
    clip_seconds: float = Field(2.0, gt=0, description="VBench-Long clip length in seconds "
                                "(clip_length_mix.yaml: 2 s for the consistency and quality "
                                "dimensions)")
    gaps: list[int] = Field(default_factory=lambda: [2, 5, 10, 20, 50], min_length=1)
    first_failure: list[FailureRule] = Field(default_factory=lambda: [
        FailureRule(measure="psnr", threshold=12.0),
        FailureRule(measure="subject_consistency", threshold=0.9)])
    references: Literal["auto", "always", "never"] = Field(
        "auto", description="build the backbone for ground truth: auto when the run measured "
        "PSNR (summary.json), always, or never")
    device: str = Field("auto", description="auto: cuda when available, else cpu")
    batch_size: int = Field(32, ge=1, description="frames per feature-extractor batch (VBench: "
                            "32 for the aesthetic head)")
    cache: bool = Field(True, description="keep features under RUN_DIR/eval/features")


def load_eval_config(source=None, overrides: list[str] = ()) -> EvalConfig:
    """An EvalConfig from a path, a dict, a model or None (defaults), with ``a.b=v`` overrides."""
    data = {} if source is None else read_config(source)
    data = apply_overrides(data, list(overrides))
    try:
        return EvalConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError([f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}"
                           for e in err.errors()]) from None
