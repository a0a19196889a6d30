"""Context planning: which frames sit in ``[sink | retrieved | local]`` and at which positions.

Terms follow the public LongLive-RAG code. ``window`` = frames in the attention set including the
sink and the current block; the rolling cache holds the sink plus the ``window - sink`` most recent
frames (current block included). A non-sink frame that has left that cache is *evicted*; evicted
frames other than the ``recency`` most recently evicted are *eligible* for retrieval.

Placement of the local part (current block included) per stream with ``n`` retrieved frames:
``reference`` ``window - sink - k`` frames whatever ``n`` is (the public code); ``fill``
``window - sink - n``; ``extend`` ``window - sink`` (retrieved frames come on top).

Temporal positions (``positions``): ``slots`` (default; the LongLive-RAG latent-memory model,
LongLive's ``use_infinite_attention``): frame ``f`` sits at ``f`` until the cache rolls, then the
block takes the last slots (``window - Fb .. window - 1``) and sink frames keep ``0 .. sink - 1``,
so positions stay below ``window``. ``absolute`` (the public native pipelines: Self-Forcing,
Causal-Forcing, CausVid and LongLive ``causal_model.py``, LongLive-RAG ``_native.yaml``): every
frame at its frame index, so positions grow with the video (a backbone may bound them:
``BackboneSpec.max_positions``). RoPE sees only differences of positions, so without retrieval the
two differ once the cache rolls and only through the sink (with ``sink: 0`` only by rounding).
Retrieved frames get 0 (``zero``, public) or the positions just before the first local frame
(``before_local``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..interfaces import ROLE_LOCAL, ROLE_RETRIEVED, ROLE_SINK


@dataclass(frozen=True)
class Geometry:
    block: int
    window: int
    sink: int
    k: int = 0
    recency: int = 0
    placement: str = "fill"
    retrieved_position: str = "zero"
    positions: str = "slots"

    def check(self) -> list[str]:
        """Errors of this geometry, as config messages."""
        errors = []
        local = self.window - self.sink - (self.k if self.placement == "reference" else 0)
        if local < self.block:
            what = "window - sink - k" if self.placement == "reference" else "window - sink"
            errors.append(f"generation: {what} = {local} leaves no room for a block of "
                          f"{self.block} frames (window {self.window}, sink {self.sink}, "
                          f"k {self.k}, placement {self.placement})")
        return errors

    @property
    def cache(self) -> int:
        return self.window - self.sink

    def first_cached(self, start: int, size: int) -> int:
        """Oldest non-sink frame still in the rolling cache while generating [start, start+size)."""
        return max(self.sink, start + size - self.cache)

    def eligible(self, start: int, has_kv: Tensor) -> Tensor:
        """Frames [0, start) retrievable before block ``start``: bool [start]. Candidates are the
        frames already evicted when the block starts (as in the public code, where a block's own
        evictions join the pool only after its retrieval), minus the ``recency`` newest."""
        ids = torch.arange(start)
        limit = max(self.sink, start - self.cache) - self.recency
        return (ids >= self.sink) & (ids < limit) & has_kv[:start]

    def position(self, frame: int, start: int, size: int) -> int:
        """Temporal position of ``frame`` (sink or cached) while generating [start, start+size)."""
        if self.positions == "absolute" or frame < self.sink:
            return frame
        return frame - max(0, start + size - self.window)

    def position_errors(self, num_frames: int, limit: int | None) -> list[str]:
        """Errors of a run of ``num_frames`` on a backbone that encodes positions ``< limit``."""
        if limit is None or self.positions != "absolute" or num_frames <= limit:
            return []
        return [f"generation: positions: absolute puts frame {num_frames - 1} at position "
                f"{num_frames - 1}, but the backbone encodes positions 0 .. {limit - 1} only "
                f"(num_frames {num_frames} > {limit}); use positions: slots or at most {limit} "
                f"frames"]


@dataclass
class Plan:
    frame_ids: Tensor  # [B, F] long, -1 = padding
    positions: Tensor  # [B, F]
    roles: Tensor  # [B, F]
    valid: Tensor  # [B, F] bool
    block_positions: Tensor  # [B, size]


def plan_block(g: Geometry, start: int, size: int, retrieved: list[list[int]]) -> Plan:
    """Plan the context of block [start, start+size) for streams that retrieved ``retrieved``."""
    rows = []
    for ids in retrieved:
        ids = sorted(ids)
        if g.placement == "reference":
            n_local = g.cache - g.k - size
        elif g.placement == "fill":
            n_local = g.cache - len(ids) - size
        else:
            n_local = g.cache - size
        sink = list(range(min(g.sink, start)))
        local = list(range(max(g.sink, start - n_local), start))
        first_local = g.position(local[0] if local else start, start, size)
        if g.retrieved_position == "zero":
            ret_pos = [0] * len(ids)
        else:
            ret_pos = [first_local - len(ids) + j for j in range(len(ids))]
        frames = sink + ids + local
        positions = sink + ret_pos + [g.position(f, start, size) for f in local]
        roles = [ROLE_SINK] * len(sink) + [ROLE_RETRIEVED] * len(ids) + [ROLE_LOCAL] * len(local)
        rows.append((frames, positions, roles))
    width = max(len(r[0]) for r in rows)
    b = len(rows)
    frame_ids = torch.full((b, width), -1, dtype=torch.long)
    positions = torch.zeros((b, width), dtype=torch.long)
    roles = torch.full((b, width), ROLE_LOCAL, dtype=torch.long)
    for i, (frames, pos, role) in enumerate(rows):
        frame_ids[i, :len(frames)] = torch.tensor(frames, dtype=torch.long)
        positions[i, :len(pos)] = torch.tensor(pos, dtype=torch.long)
        roles[i, :len(role)] = torch.tensor(role, dtype=torch.long)
    block_pos = torch.tensor([g.position(f, start, size) for f in range(start, start + size)])
    return Plan(frame_ids, positions, roles, frame_ids >= 0, block_pos.expand(b, -1).clone())
