"""Params of the tiny backbone (kept free of torch so listing plugins stays fast)."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TinyParams(BaseModel):
    """Params of the ``tiny`` backbone (sizes, sampler, optional weights)."""

    model_config = ConfigDict(extra="forbid")
    channels: int = Field(3, ge=1)
    height: int = Field(64, ge=1)
    width: int = Field(64, ge=1)
    patch: int = Field(8, ge=1)
    dim: int = Field(192, ge=8)
    layers: int = Field(5, ge=1)
    heads: int = Field(6, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    action_dim: int = Field(2, ge=1)
    frames_per_block: int = Field(3, ge=1)
    window: int = Field(12, ge=2)
    sink: int = Field(1, ge=0)
    steps: list[float] = Field([1.0, 0.75, 0.5, 0.25], min_length=1,
                               description="noise levels sigma of the denoising steps, descending")
    shift: float = Field(1.0, gt=0, description="timestep shift sigma' = s*sigma/(1+(s-1)*sigma)")
    sampler: Literal["renoise", "euler"] = "renoise"
    weights: str | None = Field("builtin", description="safetensors file of TinyDiT weights; "
                                "builtin: the shipped world model; builtin-planned: its "
                                "predecessor (one-block rollouts); builtin-contiguous: the shipped "
                                "model trained on contiguous windows only; null: random init")
    init_seed: int = 0
