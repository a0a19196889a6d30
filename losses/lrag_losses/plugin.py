"""Entry point of the built-in losses: ``window_temporal_delta``, ``trajectory_smoothing``,
``reconstruction`` (free of torch; the losses are imported by the factories)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from lrag_framework import hookimpl

LRAG_API_VERSION = 2


class WeightParams(BaseModel):
    """Params of a loss with nothing but its weight in the total."""

    model_config = ConfigDict(extra="forbid")
    weight: float = Field(1.0, ge=0, description="multiplier of this loss in the total")


class WindowTemporalDeltaParams(WeightParams):
    margin: float = Field(0.85, ge=-1, le=1, description="cosine similarity allowed for free")
    window: int = Field(3, ge=1, description="largest frame lag w (clipped to S-1)")


def build_window_temporal_delta(params: WindowTemporalDeltaParams):
    from .temporal import WindowTemporalDeltaLoss

    return WindowTemporalDeltaLoss(params)


def build_trajectory_smoothing(params: WeightParams):
    from .temporal import TrajectorySmoothingLoss

    return TrajectorySmoothingLoss(params)


def build_reconstruction(params: WeightParams):
    from .reconstruction import ReconstructionLoss

    return ReconstructionLoss(params)


@hookimpl
def register_losses(register):
    register("window_temporal_delta", build_window_temporal_delta, WindowTemporalDeltaParams)
    register("trajectory_smoothing", build_trajectory_smoothing, WeightParams)
    register("reconstruction", build_reconstruction, WeightParams)
