"""Streaming decode: each finished block is decoded (the backbone's stream decoder carries its
causal state from block to block) and appended to one growing mp4 per stream, so a long video
is never held in memory and its first frames are on disk one block after the start."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch import Tensor

from .media import StreamingVideoWriter, uint8_frames


class VideoStreams:
    """Decode blocks of a batch of streams; write them (``directory``) and/or keep the pixels
    (``keep_pixels``, for metrics against ground truth)."""

    def __init__(self, backbone, device: torch.device, directory: Path | None, fps: int,
                 scale: int, keep_pixels: bool, names: dict[int, str] | None = None):
        """``names``: stream -> file stem (default ``stream_000``)."""
        self.backbone, self.device, self.directory = backbone, device, directory
        self.names = names or {}
        # a backbone may decode on another device (Wan's decoder_device)
        self.decode_device = torch.device(getattr(backbone, "decode_device", device))
        self.fps, self.scale, self.keep_pixels = fps, scale, keep_pixels
        self.pixels: dict[int, list[Tensor]] = {}  # stream -> decoded blocks [f, 3, h, w]
        self.seconds = 0.0  # the generation loop spent decoding, or waiting for the writer
        self.first_frame_seconds: float | None = None  # from the first batch's start
        self._started: float | None = None
        self._batch = None

    @contextmanager
    def batch(self, streams: list[int], write: bool = True):
        """Open the decoder and the writers of one batch (``write=False``: decode only, for the
        kept pixels of a batch whose videos a resumed run already has); an error inside keeps the partial,
        playable files under their partial names (see ``StreamingVideoWriter``). Encoding and
        writing run on one background thread, in order, while the next block is generated; on
        CUDA the decoding too runs beside generation, on a side stream."""
        if self._started is None:
            self._started = time.perf_counter()
        with ExitStack() as stack:
            writers = [] if self.directory is None or not write else [
                stack.enter_context(StreamingVideoWriter(
                    self.directory / f"{self.names.get(s, f'stream_{s:03d}')}.mp4", self.fps))
                for s in streams]
            pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="lrag-video"))
            side = (torch.cuda.Stream(self.decode_device)
                    if self.decode_device.type == "cuda" and not self.keep_pixels else None)
            self._batch = (streams, self.backbone.stream_decoder(), writers, pool, [], side)
            try:
                yield self
                self._drain()  # writer errors surface here, before the files are closed
            finally:
                self._batch = None

    def append(self, latents: Tensor) -> None:
        """Decode a block of latents [B, F, C, H, W] of the open batch and queue its frames."""
        t0 = time.perf_counter()
        streams, decode, writers, pool, pending, side = self._batch
        ready = None
        with torch.no_grad():
            if side is None:
                pixels = decode(latents.to(self.device)).float()  # [B, f, 3, h, w]
                if self.keep_pixels:
                    for i, stream in enumerate(streams):
                        self.pixels.setdefault(stream, []).append(pixels[i].cpu())
                frames = uint8_frames(pixels, self.scale).cpu()  # [B, f, H, W, 3]
            else:  # decode beside the next block's passes; the writer waits for the copy
                if self.device.type == "cuda":
                    side.wait_stream(torch.cuda.current_stream(self.device))
                if latents.device == self.decode_device:  # else copied on the compute stream
                    latents.record_stream(side)
                with torch.cuda.stream(side):
                    decoded = uint8_frames(decode(latents), self.scale)
                    frames = torch.empty(decoded.shape, dtype=torch.uint8, pin_memory=True)
                    frames.copy_(decoded, non_blocking=True)
                    ready = torch.cuda.Event()
                    ready.record(side)
        if writers:
            pending.append(pool.submit(self._write, writers, frames, ready))
            if len(pending) > 2:  # bounded: at most two blocks wait for the encoder
                pending.pop(0).result()
        self.seconds += time.perf_counter() - t0

    def _write(self, writers: list, frames: Tensor, ready) -> None:
        if ready is not None:
            ready.synchronize()
        for writer, video in zip(writers, frames):
            writer.append(video.numpy())
        if self.first_frame_seconds is None:
            self.first_frame_seconds = time.perf_counter() - self._started

    def _drain(self) -> None:
        t0 = time.perf_counter()
        for future in self._batch[4]:
            future.result()
        self._batch[4].clear()
        self.seconds += time.perf_counter() - t0

    def stacked(self) -> Tensor:
        """Kept pixels of every stream [S, T, 3, h, w]."""
        return torch.stack([torch.cat(self.pixels[s]) for s in sorted(self.pixels)])
