"""History K/V memory: every frame's K/V written once (at its recache pass) into a preallocated
pool, gathered once per block for the planned context, under a byte budget.

Layout, frame-major: ``pool [B * capacity, L, 2, N, Hh, Dh]``, so one frame of one stream is one
contiguous block (one copy moves it between tiers). ``slot_of[frame]`` maps a frame id (shared by
the streams of a batch, which advance in lockstep) to its pool slot, -1 when its K/V is not held.
When history outgrows the budget, a policy picks evicted frames whose K/V is dropped (they stay
indexed by the retriever but become ineligible): ``thin`` drops, among the droppable frames, those
closest to their previous held neighbour, so the frames that keep K/V stay spread evenly over the
whole history at a density that halves as it grows (neighbouring frames are near-duplicates for
retrieval); ``drop_oldest`` keeps only the most recent history; ``error`` refuses to start.

Storage: the backbone's K/V dtype, or ``float8`` (e4m3, one float32 scale per frame, layer and
K/V: half the bytes of bf16). Tier ``auto``: the pool lives on the compute device. Tier ``cpu``:
the pool lives in host memory (pinned when computing on a GPU) and a small device ring keeps the
sink and the most recent ``recent`` frames, so a block's local context never crosses the bus;
only retrieved frames do, copied by ``prefetch`` on a side stream as soon as the engine knows
them (while the previous block's recache pass runs); new frames go to the host on the same side
stream, overlapping the next block. The ring holds the backbone's dtype, and under ``float8`` it
exists on either tier: only history is quantised, the sink and the local window stay exact (a
native run is the same whatever the storage) and need no dequantising.
"""
from __future__ import annotations

import weakref

import torch
from torch import Tensor

from ..interfaces import BackboneSpec


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


def quantize(kv: Tensor) -> tuple[Tensor, Tensor]:
    """K/V [..., N, Hh, Dh] -> float8 values and one float32 scale per [...] (its amax / 448)."""
    scale = kv.abs().amax(dim=(-3, -2, -1)).float().clamp(min=1e-12) / FP8_MAX
    return (kv / scale[..., None, None, None]).to(FP8), scale


def dequantize_into(out: Tensor, values: Tensor, scale: Tensor) -> None:
    """float8 K/V [n, ..., N, Hh, Dh] with scales [n, ...] -> ``out`` (its dtype), computed in
    float32 and rounded once: a cast copy and an in-place multiply, no temporaries."""
    out.copy_(values)
    torch.mul(out, scale[..., None, None, None], out=out)


def runs(flags: list[bool]) -> list[tuple[bool, int, int, int]]:
    """Maximal runs of equal flags, in order: (flag, start, end, how many earlier flags equal
    this one), the last being where the run starts among its own kind."""
    bounds = [i for i in range(1, len(flags)) if flags[i] != flags[i - 1]]
    out, seen = [], {True: 0, False: 0}
    for a, z in zip([0, *bounds], [*bounds, len(flags)]):
        out.append((flags[a], a, z, seen[flags[a]]))
        seen[flags[a]] += z - a
    return out


_pinned: dict = {}  # the last page-locked host buffer, kept for the next run of the same size


def pinned_empty(shape: tuple, dtype: torch.dtype) -> Tensor:
    """Page-locked host memory of exactly ``shape`` (torch's pinned allocator rounds a request
    up to a power of two: a 64 GiB pool would lock 128 GiB). Registered with CUDA once and kept
    for the next pool of the same shape (a run's native and retrieval modes, its batches)."""
    key = (tuple(shape), dtype)
    if key not in _pinned:
        _pinned.clear()  # unregisters the previous buffer (finalizer below)
        buffer = torch.empty(shape, dtype=dtype)
        cudart = torch.cuda.cudart()
        err = cudart.cudaHostRegister(buffer.data_ptr(), buffer.numel() * buffer.element_size(), 0)
        if int(err) != 0:
            raise MemoryBudgetError(f"cannot page-lock {buffer.nbytes / 2 ** 30:.1f} GiB of host "
                                    f"memory for the K/V pool (CUDA error {int(err)}): lower "
                                    f"memory.budget_gb or use memory.storage=float8")
        weakref.finalize(buffer, cudart.cudaHostUnregister, buffer.data_ptr())
        _pinned[key] = buffer
    return _pinned[key]


class FrameStore:
    """``rows`` frame rows [rows, L, 2, N, Hh, Dh] (+ float8 scales [rows, L, 2]) on a device.
    Rows are only read after being written, except padding reads of row 0 of each stream,
    which ``zero_rows`` makes finite."""

    def __init__(self, rows: int, frame_shape: tuple, dtype: torch.dtype, fp8: bool,
                 device: torch.device, pin: bool, zero_rows: Tensor):
        dtype = FP8 if fp8 else dtype
        if pin:
            self.values = pinned_empty((rows, *frame_shape), dtype)
            self.values[zero_rows] = torch.zeros((), dtype=torch.float32).to(dtype)
        else:
            self.values = torch.zeros((rows, *frame_shape), dtype=dtype, device=device)
        self.scale = torch.ones((rows, *frame_shape[:2]), device=device, pin_memory=pin) \
            if fp8 else None

    def put(self, rows: Tensor, values: Tensor, scale: Tensor | None) -> None:
        """Write frame rows (``values`` [n, L, 2, ...] on any device) at row indices [n]."""
        if self.values.device == values.device:
            rows = rows.to(values.device, non_blocking=True)  # row ids: copied without a sync
            self.values[rows] = values
            if scale is not None:
                self.scale[rows] = scale
            return
        for i, row in enumerate(rows.tolist()):  # device -> pinned host: async, row by row
            self.values[row].copy_(values[i], non_blocking=True)
            if scale is not None:
                self.scale[row].copy_(scale[i], non_blocking=True)

    def take(self, rows: Tensor, device: torch.device) -> tuple[Tensor, Tensor | None]:
        """Rows [n] -> values [n, L, 2, ...] and scales on ``device`` (one copy per row when
        crossing from host to device, issued on the current stream)."""
        if self.values.device == device:
            rows = rows.to(device, non_blocking=True)
            scale = None if self.scale is None else self.scale.index_select(0, rows)
            return self.values.index_select(0, rows), scale
        values = torch.empty((len(rows), *self.values.shape[1:]), dtype=self.values.dtype,
                             device=device)
        scale = None if self.scale is None else torch.empty(
            (len(rows), *self.scale.shape[1:]), device=device)
        for i, row in enumerate(rows.tolist()):
            values[i].copy_(self.values[row], non_blocking=True)
            if scale is not None:
                scale[i].copy_(self.scale[row], non_blocking=True)
        return values, scale


def check_budget(spec: BackboneSpec, streams: int, total_frames: int, min_frames: int,
                 budget_bytes: float, policy: str, storage: str = "auto") -> int:
    """The pool's capacity in frames per stream; MemoryBudgetError when the budget cannot hold
    ``min_frames`` (window + block) or, with policy ``error``, every frame."""
    per_frame = frame_bytes(spec, streams, storage)
    need = total_frames * per_frame
    capacity = min(total_frames, int(budget_bytes // per_frame))
    gib = 2 ** 30
    if need > budget_bytes and (policy == "error" or capacity < min_frames):
        hint = ("raise memory.budget_gb, set memory.storage=float8 or memory.policy=thin"
                if policy == "error" else "raise memory.budget_gb")
        raise MemoryBudgetError(
            f"history K/V of {total_frames} frames x {streams} streams needs "
            f"{need / gib:.2f} GiB ({per_frame / 2**20:.1f} MiB per frame), over the "
            f"budget of {budget_bytes / gib:.2f} GiB (policy {policy}, at least {min_frames} "
            f"frames must fit): {hint}")
    return capacity


class KVMemory:
    def __init__(self, spec: BackboneSpec, streams: int, total_frames: int, min_frames: int,
                 budget_bytes: float, policy: str, device: torch.device, storage: str = "auto",
                 tier: str = "auto", sink: int = 0):
        """``min_frames``: frames that must fit (window + block), also the recent frames the
        device ring of tier ``cpu`` keeps besides the ``sink``."""
        self.frame_bytes = frame_bytes(spec, streams, storage)
        capacity = check_budget(spec, streams, total_frames, min_frames, budget_bytes, policy,
                                storage)
        self.capacity, self.policy, self.streams = capacity, policy, streams
        self.device, self.kv_dtype = torch.device(device), spec.kv_dtype
        fp8 = storage == "float8"
        frame = (spec.num_layers, 2, spec.tokens_per_frame, spec.num_heads, spec.head_dim)
        home = torch.device("cpu") if tier == "cpu" else self.device
        pin = home.type == "cpu" and self.device.type == "cuda"
        firsts = torch.arange(streams) * capacity
        self.pool = FrameStore(streams * capacity, frame, spec.kv_dtype, fp8, home, pin, firsts)
        self.ring = None  # tier cpu or float8: sink + recent frames, exact, on the device
        if tier == "cpu" or fp8:
            self.sink, self.recent = sink, min_frames
            self.ring = FrameStore(streams * (sink + min_frames), frame, spec.kv_dtype, False,
                                   self.device, False, firsts)
        self.side = torch.cuda.Stream(self.device) if pin else None
        self.staged = None  # (key, values, scale, event) of the last prefetch
        self.slot_of = torch.full((total_frames,), -1, dtype=torch.long)
        self.owner = torch.full((capacity,), -1, dtype=torch.long)  # frame held by each slot
        self.dropped = 0

    @property
    def bytes(self) -> int:
        return self.capacity * self.frame_bytes

    def has_kv(self) -> Tensor:
        return self.slot_of >= 0

    # -- slots ------------------------------------------------------------------------------
    def reserve(self, start: int, count: int, droppable_below: int, keep: int) -> None:
        """Give frames [start, start+count) pool slots (kept if held), dropping K/V by the policy
        if the pool is full: frames in [keep, droppable_below) may go (sink and window not)."""
        frames = torch.arange(start, start + count)
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

    def _rows(self, slots: Tensor, capacity: int) -> Tensor:
        """Slots [F] of a store of ``capacity`` slots per stream -> rows of every stream
        [B * F], stream-major."""
        return (torch.arange(self.streams)[:, None] * capacity + slots[None]).flatten()

    def _ring_slot(self, frames: Tensor) -> Tensor:
        return torch.where(frames < self.sink, frames,
                           self.sink + (frames - self.sink) % self.recent)

    # -- data -------------------------------------------------------------------------------
    def store(self, start: int, kv: Tensor) -> None:
        """K/V ``[L, 2, B, F, N, Hh, Dh]`` of frames [start, start+F), slots already reserved."""
        frames = torch.arange(start, start + kv.shape[3])
        if self.ring is not None:
            rows = self._rows(self._ring_slot(frames), self.sink + self.recent)
            self.ring.put(rows, kv.permute(2, 3, 0, 1, 4, 5, 6).flatten(0, 1), None)
        scale = None
        if self.pool.scale is not None:
            kv, scale = quantize(kv)  # scale [L, 2, B, F]
            scale = scale.permute(2, 3, 0, 1).flatten(0, 1)  # [B*F, L, 2]
        values = kv.permute(2, 3, 0, 1, 4, 5, 6).flatten(0, 1).contiguous()  # [B*F, L, 2, ...]
        rows = self._rows(self.slot_of[frames], self.capacity)
        if self.side is None:
            self.pool.put(rows, values, scale)
        else:  # device -> host on the side stream, overlapping the next block's passes
            self.side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.side):
                self.pool.put(rows, values, scale)
            for t in (values, scale) if scale is not None else (values,):
                t.record_stream(self.side)

    def write(self, start: int, kv: Tensor, droppable_below: int, keep: int) -> None:
        """``reserve`` then ``store`` (overwrites frames already held)."""
        self.reserve(start, kv.shape[3], droppable_below, keep)
        self.store(start, kv)

    def _split(self, frame_ids: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Planned ids [B, F] -> whether each is read from the ring [B, F], and pool slots."""
        ids = frame_ids.clamp(min=0)  # padding (-1) reads slot 0: finite, masked by valid
        in_ring = torch.zeros_like(ids, dtype=torch.bool)
        if self.ring is not None:
            in_ring = (ids < self.sink) | (ids >= start - self.recent)
        slots = torch.where(frame_ids >= 0, self.slot_of[ids], 0)
        if bool((slots[~in_ring] < 0).any()):
            raise RuntimeError("planned a frame whose K/V is not held (engine bug)")
        return in_ring, slots

    def _pool_rows(self, frame_ids: Tensor, in_ring: Tensor, slots: Tensor) -> Tensor:
        b = torch.arange(frame_ids.shape[0])[:, None].expand_as(frame_ids)
        return (b * self.capacity + slots)[~in_ring]

    def prefetch(self, frame_ids: Tensor, start: int, after: torch.cuda.Event | None = None
                 ) -> None:
        """Start copying the pool frames that ``gather(frame_ids, start)`` will need from the
        host to the device on a side stream (tier ``cpu`` on a GPU; otherwise nothing), once
        the compute stream has passed ``after`` (default: all its work queued so far)."""
        if self.side is None:
            return
        in_ring, slots = self._split(frame_ids, start)
        rows = self._pool_rows(frame_ids, in_ring, slots)
        if after is None:  # frames stored so far first
            self.side.wait_stream(torch.cuda.current_stream(self.device))
        else:
            self.side.wait_event(after)
        with torch.cuda.stream(self.side):
            values, scale = self.pool.take(rows, self.device)
        event = torch.cuda.Event()
        event.record(self.side)
        self.staged = (tuple(rows.tolist()), values, scale, event)

    def gather(self, frame_ids: Tensor, start: int = 0) -> Tensor:
        """K/V of planned frames ``[B, F]`` for the block at ``start`` -> [L, 2, B, F, N, Hh, Dh]
        on the compute device in the backbone's dtype (a view of frame-major rows)."""
        b, f = frame_ids.shape
        in_ring, slots = self._split(frame_ids, start)
        rows = self._pool_rows(frame_ids, in_ring, slots)
        if self.staged is not None and self.staged[0] == tuple(rows.tolist()):
            _, values, scale, event = self.staged
            torch.cuda.current_stream(self.device).wait_event(event)
            for t in (values, scale) if scale is not None else (values,):
                t.record_stream(torch.cuda.current_stream(self.device))
        else:
            if self.side is not None:  # rows stored on the side stream must have landed
                torch.cuda.current_stream(self.device).wait_stream(self.side)
            values, scale = self.pool.take(rows, self.device)
        self.staged = None
        if self.ring is not None and bool(in_ring.any()):
            values = self._merged(frame_ids, in_ring, values, scale)
        elif scale is not None:  # float8 history rows -> the backbone's dtype
            out = torch.empty(values.shape, dtype=self.kv_dtype, device=values.device)
            dequantize_into(out, values, scale)
            values = out
        return values.view(b, f, *values.shape[1:]).permute(2, 3, 0, 1, 4, 5, 6)

    def _merged(self, frame_ids: Tensor, in_ring: Tensor, pool_values: Tensor,
                scale: Tensor | None) -> Tensor:
        """Planned rows [B * F, ...] in the backbone's dtype: each run of ring frames read
        straight into its place, each run of pool frames copied (dequantised) into its place;
        row ids built on the host, so nothing waits for the GPU."""
        ring_rows = (torch.arange(frame_ids.shape[0])[:, None] * (self.sink + self.recent)
                     + self._ring_slot(frame_ids.clamp(min=0)))[in_ring]
        ring_rows = ring_rows.to(self.device, non_blocking=True)
        shape = (frame_ids.numel(), *self.ring.values.shape[1:])
        values = torch.empty(shape, dtype=self.kv_dtype, device=self.device)
        for from_ring, a, z, i in runs(in_ring.flatten().tolist()):
            j = i + z - a  # [i, j): the run's rows in its own source
            if from_ring:
                torch.index_select(self.ring.values, 0, ring_rows[i:j], out=values[a:z])
            elif scale is not None:
                dequantize_into(values[a:z], pool_values[i:j], scale[i:j])
            else:
                values[a:z] = pool_values[i:j]
        return values
