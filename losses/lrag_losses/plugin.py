"""Entry point of the built-in losses: ``window_temporal_delta``, ``trajectory_smoothing``,
``reconstruction`` (free of torch; the losses are imported by the factories)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from lrag_framework import hookimpl

LRAG_API_VERSION = 2


class WindowTemporalDeltaParams(BaseModel):
    """Params of ``window_temporal_delta`` (its weight in the total is the loss section's
    ``weight``, a framework field)."""

    model_config = ConfigDict(extra="forbid")
    margin: float = Field(0.85, ge=-1, le=1, description="cosine similarity allowed for free")
    window: int = Field(3, ge=1, description="largest frame lag w (clipped to S-1)")


def build_window_temporal_delta(params: WindowTemporalDeltaParams):
    from .temporal import WindowTemporalDeltaLoss

    return WindowTemporalDeltaLoss(params)


def build_trajectory_smoothing():
    from .temporal import TrajectorySmoothingLoss

    return TrajectorySmoothingLoss()


def build_reconstruction():
    from .reconstruction import ReconstructionLoss

    return ReconstructionLoss()


@hookimpl
def register_losses(register):
    register("window_temporal_delta", build_window_temporal_delta, WindowTemporalDeltaParams)
    register("trajectory_smoothing", build_trajectory_smoothing)
    register("reconstruction", build_reconstruction)
