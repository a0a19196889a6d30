"""Wan2.1 3-D rotary position embedding (RoPE), temporal index supplied by the caller.

Wan (``wan/modules/model.py``: ``rope_params``, ``rope_apply``) rotates adjacent channel pairs
``(x[2i], x[2i+1])`` of each head. The ``Dh / 2`` pairs are split into a temporal part and two
spatial parts of ``Dh/2 - 2 (Dh//6)``, ``Dh//6`` and ``Dh//6`` pairs (22/21/21 for Dh = 128), each
with its own frequencies ``theta ** (-2i / dim_part)``, theta = 10000. The temporal index comes
from the engine's context plan (any integer per frame), the spatial ones from the token grid.
Angles are computed in float64 as upstream, the rotation in float32.

Upstream tabulates the angles for ``TABLE_POSITIONS`` = 1024 temporal positions
(``rope_params(1024, ...)``) and its causal models (``causal_rope_apply``) slice that table at the
absolute frame index: a block that reaches frame 1024 gets a short slice and fails with a tensor
shape ``RuntimeError``. Angles are computed here for any position; the backbone declares the
table's size (``BackboneSpec.max_positions``) so that a run with ``positions: absolute`` past it
is refused before it starts.
"""
from __future__ import annotations

import torch
from torch import Tensor

TABLE_POSITIONS = 1024  # temporal positions of upstream's RoPE table


def frequencies(head_dim: int, theta: float = 10000.0) -> tuple[Tensor, Tensor, Tensor]:
    """Angular frequencies (float64) of the temporal, height and width pairs."""
    if head_dim % 2:
        raise ValueError(f"wan: head dim must be even for RoPE, got {head_dim}")
    sixth = head_dim // 6

    def part(dim: int) -> Tensor:
        return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)

    return part(head_dim - 4 * sixth), part(2 * sixth), part(2 * sixth)


class WanRope:
    """RoPE tables for frames of a fixed token grid ``(h, w)`` (tokens ordered row-major)."""

    def __init__(self, head_dim: int, grid: tuple[int, int], theta: float = 10000.0):
        self.temporal, f_h, f_w = frequencies(head_dim, theta)
        h, w = grid
        rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)  # [N]
        cols = torch.arange(w, dtype=torch.float64).repeat(h)  # [N]
        self.spatial = torch.cat((rows[:, None] * f_h, cols[:, None] * f_w), dim=1)  # [N, Ps]
        self._on: dict[torch.device, tuple[Tensor, Tensor]] = {}  # the tables, per device

    def tables(self, positions: Tensor, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """Temporal positions [B, F] -> cos, sin [B, F, N, 1, Dh/2] (float32 on ``device``).
        The frequency tables are copied to a device once; positions without a host sync."""
        device = torch.device(device)
        if device not in self._on:
            self._on[device] = (self.temporal.to(device), self.spatial.to(device))
        temporal_f, spatial = self._on[device]
        b, f = positions.shape
        n = self.spatial.shape[0]
        temporal = positions.to(device, torch.float64, non_blocking=True)[..., None] * temporal_f
        angles = torch.cat((temporal[:, :, None].expand(b, f, n, -1),
                            spatial.expand(b, f, n, -1)), dim=-1)
        angles = angles[..., None, :]  # [B, F, N, 1, Dh/2]: broadcast over heads
        return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs of ``x`` [B, F, N, Hh, Dh] by tables [B, F, N, 1, Dh/2]."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)
