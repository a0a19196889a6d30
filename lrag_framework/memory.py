"""History K/V memory: every frame's K/V written once (at its recache pass) into a preallocated
pool, gathered once per block for the planned context, under a byte budget.

Layout: ``pool [L, 2, B, capacity, N, Hh, Dh]``; ``slot_of[frame]`` maps a frame id (shared by the
streams of a batch, which advance in lockstep) to its pool slot, -1 when its K/V is not held.
When history outgrows the budget, a policy picks evicted frames whose K/V is dropped (they stay
indexed by the retriever but become ineligible): ``thin`` drops, among the droppable frames, those
closest to their previous held neighbour, so the frames that keep K/V stay spread evenly over the
whole history at a density that halves as it grows (neighbouring frames are near-duplicates for
retrieval); ``drop_oldest`` keeps only the most recent history; ``error`` refuses to start.

Storage: the backbone's K/V dtype, or ``float8`` (e4m3, one float32 scale per frame, layer and
K/V: half the bytes of bf16). Tier: the compute device, or ``cpu`` (pinned host memory when the
compute device is a GPU); the gathered context then travels to the compute device once per block.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .interfaces import BackboneSpec


class MemoryBudgetError(RuntimeError):
    pass


FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3 value


def frame_bytes(spec: BackboneSpec, streams: int, storage: str = "auto") -> int:
    """Bytes of one frame's K/V over all layers and streams (+ its scales under float8)."""
    per = spec.num_layers * 2 * spec.tokens_per_frame * spec.num_heads * spec.head_dim
    if storage == "float8":
        return (per + spec.num_layers * 2 * 4) * streams
    return per * streams * torch.empty((), dtype=spec.kv_dtype).element_size()


def dequantize(values: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """float8 K/V [L, 2, B, F, N, Hh, Dh] with scales [L, 2, B, F] -> ``dtype``."""
    return (values.float() * scale[..., None, None, None]).to(dtype)


class KVMemory:
    def __init__(self, spec: BackboneSpec, streams: int, total_frames: int, min_frames: int,
                 budget_bytes: float, policy: str, device: torch.device, storage: str = "auto",
                 tier: str = "auto"):
        self.frame_bytes = frame_bytes(spec, streams, storage)
        need = total_frames * self.frame_bytes
        capacity = min(total_frames, int(budget_bytes // self.frame_bytes))
        gib = 2 ** 30
        if need > budget_bytes and (policy == "error" or capacity < min_frames):
            hint = ("raise memory.budget_gb, set memory.storage=float8 or memory.policy=thin"
                    if policy == "error" else "raise memory.budget_gb")
            raise MemoryBudgetError(
                f"history K/V of {total_frames} frames x {streams} streams needs "
                f"{need / gib:.2f} GiB ({self.frame_bytes / 2**20:.1f} MiB per frame), over the "
                f"budget of {budget_bytes / gib:.2f} GiB (policy {policy}, at least {min_frames} "
                f"frames must fit): {hint}")
        self.capacity, self.policy = capacity, policy
        self.device, self.kv_dtype = torch.device(device), spec.kv_dtype
        home = torch.device("cpu") if tier == "cpu" else self.device
        pin = home.type == "cpu" and self.device.type == "cuda"
        shape = (spec.num_layers, 2, streams, capacity, spec.tokens_per_frame, spec.num_heads,
                 spec.head_dim)
        dtype = FP8 if storage == "float8" else spec.kv_dtype
        self.pool = torch.zeros(shape, dtype=dtype, device=home, pin_memory=pin)
        self.scale = (torch.ones(shape[:4], device=home, pin_memory=pin)
                      if storage == "float8" else None)  # [L, 2, B, capacity]
        self._dequantize = dequantize
        if storage == "float8" and self.device.type == "cuda":  # one fused kernel
            self._dequantize = torch.compile(dequantize, dynamic=True)
        self.slot_of = torch.full((total_frames,), -1, dtype=torch.long)
        self.owner = torch.full((capacity,), -1, dtype=torch.long)  # frame held by each slot
        self.dropped = 0

    @property
    def bytes(self) -> int:
        return self.capacity * self.frame_bytes

    def has_kv(self) -> Tensor:
        return self.slot_of >= 0

    def _allocate(self, frames: Tensor, droppable_below: int, keep: int) -> Tensor:
        slots = self.slot_of[frames].clone()
        missing = slots < 0
        free = (self.owner < 0).nonzero().flatten()
        need = int(missing.sum())
        if len(free) < need:
            victims = self._victims(need - len(free), droppable_below, keep)
            if len(free) + len(victims) < need:
                raise MemoryBudgetError("history K/V pool full and nothing evicted to drop: "
                                        "raise memory.budget_gb")
            self.owner[self.slot_of[victims]] = -1
            self.slot_of[victims] = -1
            self.dropped += len(victims)
            free = (self.owner < 0).nonzero().flatten()
        slots[missing] = free[:need]
        self.slot_of[frames] = slots
        self.owner[slots] = frames
        return slots

    def _victims(self, count: int, droppable_below: int, keep: int) -> Tensor:
        held = self.owner[self.owner >= 0].sort().values
        droppable = (held < droppable_below) & (held >= keep)
        if self.policy == "drop_oldest":
            return held[droppable][:count]
        victims = []
        for _ in range(min(count, int(droppable.sum()))):  # one at a time: gaps change
            gap = torch.diff(held, prepend=held[:1] - held.max() - 1)  # to the previous held
            i = int(torch.where(droppable, gap, torch.iinfo(torch.long).max).argmin())
            victims.append(held[i])  # the closest to its predecessor (the oldest on ties)
            held, droppable = torch.cat((held[:i], held[i + 1:])), torch.cat(
                (droppable[:i], droppable[i + 1:]))
        return torch.stack(victims) if victims else held[:0]

    def write(self, start: int, kv: Tensor, droppable_below: int, keep: int) -> None:
        """Store K/V ``[L, 2, B, F, N, Hh, Dh]`` of frames [start, start+F) (overwrites if held).

        Frames in [keep, droppable_below) may be dropped to make room (sink and window are not).
        """
        frames = torch.arange(start, start + kv.shape[3])
        slots = self._allocate(frames, droppable_below, keep).to(self.pool.device)
        kv = kv.to(self.pool.device)
        if self.scale is not None:
            scale = kv.float().abs().amax(dim=(4, 5, 6)).clamp(min=1e-12) / FP8_MAX  # [L,2,B,F]
            self.scale[:, :, :, slots] = scale
            kv = kv.float() / scale[..., None, None, None]
        self.pool[:, :, :, slots] = kv.to(self.pool.dtype)

    def gather(self, frame_ids: Tensor) -> Tensor:
        """K/V of planned frames ``[B, F]`` -> [L, 2, B, F, N, Hh, Dh] on the compute device in
        the backbone's dtype; padding (-1) reads slot 0, which is finite (the pool starts zeroed)
        and masked out by ``Context.valid``."""
        layers, two, b, cap = self.pool.shape[:4]
        slots = torch.where(frame_ids >= 0, self.slot_of[frame_ids.clamp(min=0)], 0)
        if bool((slots < 0).any()):
            raise RuntimeError("planned a frame whose K/V is not held (engine bug)")
        flat = (torch.arange(b)[:, None] * cap + slots).flatten().to(self.pool.device)
        f = frame_ids.shape[1]
        out = self.pool.view(layers, two, b * cap, *self.pool.shape[4:]).index_select(2, flat)
        out = out.view(layers, two, b, f, *self.pool.shape[4:]).to(self.device, non_blocking=True)
        if self.scale is None:
            return out
        scale = self.scale.view(layers, two, b * cap).index_select(2, flat).view(layers, two, b, f)
        return self._dequantize(out, scale.to(self.device, non_blocking=True), self.kv_dtype)
