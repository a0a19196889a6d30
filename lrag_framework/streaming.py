"""Streaming decode: each finished block is decoded (the backbone's stream decoder carries its
causal state from block to block) and appended to one growing mp4 per stream, so a long video
is never held in memory and its first frames are on disk one block after the start."""
from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch import Tensor

from .media import StreamingVideoWriter
from .outputs import to_uint8_frames


class VideoStreams:
    """Decode blocks of a batch of streams; write them (``directory``) and/or keep the pixels
    (``keep_pixels``, for metrics against ground truth)."""

    def __init__(self, backbone, device: torch.device, directory: Path | None, fps: int,
                 scale: int, keep_pixels: bool):
        self.backbone, self.device, self.directory = backbone, device, directory
        self.fps, self.scale, self.keep_pixels = fps, scale, keep_pixels
        self.pixels: dict[int, list[Tensor]] = {}  # stream -> decoded blocks [f, 3, h, w]
        self.seconds = 0.0  # spent decoding and writing
        self.first_frame_seconds: float | None = None  # from the first batch's start
        self._started: float | None = None
        self._batch = None

    @contextmanager
    def batch(self, streams: list[int]):
        """Open the decoder and the writers of one batch; an error inside keeps the partial,
        playable files under their partial names (see ``StreamingVideoWriter``)."""
        if self._started is None:
            self._started = time.perf_counter()
        with ExitStack() as stack:
            writers = [] if self.directory is None else [
                stack.enter_context(StreamingVideoWriter(
                    self.directory / f"stream_{s:03d}.mp4", self.fps)) for s in streams]
            self._batch = (streams, self.backbone.stream_decoder(), writers)
            try:
                yield self
            finally:
                self._batch = None

    def append(self, latents: Tensor) -> None:
        """Decode a block of latents [B, F, C, H, W] of the open batch and append its frames."""
        t0 = time.perf_counter()
        streams, decode, writers = self._batch
        with torch.no_grad():
            pixels = decode(latents.to(self.device)).float().cpu()  # [B, f, 3, h, w]
        for i, stream in enumerate(streams):
            if writers:
                writers[i].append(to_uint8_frames(pixels[i], self.scale))
            if self.keep_pixels:
                self.pixels.setdefault(stream, []).append(pixels[i])
        now = time.perf_counter()
        if self.first_frame_seconds is None:
            self.first_frame_seconds = now - self._started
        self.seconds += now - t0

    def stacked(self) -> Tensor:
        """Kept pixels of every stream [S, T, 3, h, w]."""
        return torch.stack([torch.cat(self.pixels[s]) for s in sorted(self.pixels)])
