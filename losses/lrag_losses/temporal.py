"""Temporal losses on sequences of embeddings ``[B, S, D]`` (LongLive-RAG, arXiv 2606.02553).

- Window Temporal Delta (WTD): pushes frames up to ``window`` apart to cosine similarity at most
  ``margin``, so the embedding encodes what changes rather than what stays:
  ``L = mean_{k=1..w'} mean_{b,t} relu(cos(e_t, e_{t-k}) - margin)``, ``w' = min(window, S-1)``.
- Trajectory smoothing: ``L = mean_{b,t} || e_{t+1} - 2 e_t + e_{t-1} ||_2`` (S >= 3), which
  keeps the embedding trajectory free of jitter.

Both compute in float32 (also under bf16 autocast), float64 inputs in float64.
"""
from __future__ import annotations

import torch
from torch import Tensor

from lrag_framework.interfaces import Loss, LossInputs

COS_EPS = 1e-8  # norms below this are clamped in the cosine


def check_sequence(e: Tensor, min_frames: int, name: str) -> Tensor:
    if e.ndim != 3:
        raise ValueError(f"{name} expects embeddings [B, S, D], got {list(e.shape)}")
    if e.shape[1] < min_frames:
        raise ValueError(f"{name} needs sequences of at least {min_frames} frames, "
                         f"got S={e.shape[1]}")
    return e if e.dtype == torch.float64 else e.float()


def lagged_cosine(e: Tensor, k: int) -> Tensor:
    """cos(e_t, e_{t-k}) for t = k..S-1: [B, S, D] -> [B, S-k]."""
    norm = torch.linalg.vector_norm(e, dim=-1).clamp_min(COS_EPS)  # [B, S]
    return (e[:, k:] * e[:, :-k]).sum(-1) / (norm[:, k:] * norm[:, :-k])


def window_temporal_delta(e: Tensor, margin: float, window: int) -> Tensor:
    e = check_sequence(e, 2, "window_temporal_delta")
    lags = range(1, min(window, e.shape[1] - 1) + 1)
    return torch.stack([torch.relu(lagged_cosine(e, k) - margin).mean() for k in lags]).mean()


def trajectory_smoothing(e: Tensor) -> Tensor:
    e = check_sequence(e, 3, "trajectory_smoothing")
    accel = e[:, 2:] - 2 * e[:, 1:-1] + e[:, :-2]  # [B, S-2, D]
    return torch.linalg.vector_norm(accel, dim=-1).mean()


class WindowTemporalDeltaLoss(Loss):
    def __init__(self, params):
        self.margin, self.window = params.margin, params.window

    def __call__(self, inputs: LossInputs) -> Tensor:
        return window_temporal_delta(inputs.embeddings, self.margin, self.window)


class TrajectorySmoothingLoss(Loss):
    def __call__(self, inputs: LossInputs) -> Tensor:
        return trajectory_smoothing(inputs.embeddings)
