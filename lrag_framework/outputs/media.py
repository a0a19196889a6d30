"""Media I/O: a streaming mp4 writer that is playable while it grows, and image/video readers.

Videos go through imageio-ffmpeg (its bundled ffmpeg binary: nothing to install beside the wheel).
Images go through Pillow. Readers return float tensors in [-1, 1], resized to cover the
requested size keeping the aspect ratio (Lanczos) and centre-cropped to it exactly.
"""
from __future__ import annotations

import itertools
import os
from contextlib import ExitStack, contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Self

import numpy as np
import torch
from torch import Tensor

from ..files import partial_name


def uint8_frames(pixels: Tensor, scale: int = 1) -> Tensor:
    """Pixels [..., 3, h, w] in [-1, 1] -> uint8 [..., h*scale, w*scale, 3] on their device
    (cropped to even sizes for h264)."""
    x = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if scale > 1:
        x = x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    return x.movedim(-3, -1).contiguous()


def to_uint8_frames(pixels: Tensor, scale: int = 1) -> np.ndarray:
    """Pixels [T, 3, h, w] in [-1, 1] -> uint8 array [T, h*scale, w*scale, 3]."""
    return uint8_frames(pixels, scale).cpu().numpy()


def side_by_side(*videos: np.ndarray, gap: int = 4) -> np.ndarray:
    """Concatenate uint8 videos [T, H, W, 3] horizontally with a white gap (T: the shortest)."""
    t = min(v.shape[0] for v in videos)
    h = max(v.shape[1] for v in videos)
    parts = []
    for i, v in enumerate(videos):
        if i:
            parts.append(np.full((t, h, gap, 3), 255, np.uint8))
        parts.append(np.pad(v[:t], ((0, 0), (0, h - v.shape[1]), (0, 0), (0, 0))))
    return np.concatenate(parts, axis=2)


# Fragmented mp4: an empty moov up front, then one self-contained moof+mdat per keyframe.
_MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"


def _imageio_sink(path: Path, fps: Fraction, size: tuple[int, int], gop: int, crf: int):
    """imageio-ffmpeg >= 0.7 takes the rate as a Fraction and passes it to ffmpeg exactly
    (30000/1001 stays 30000/1001); 0.5 and 0.6 refuse it (the lower bound in pyproject)."""
    import imageio_ffmpeg

    h, w = size
    return imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=None,
        macro_block_size=2, ffmpeg_log_level="error",
        output_params=["-crf", str(crf), "-tune", "zerolatency", "-g", str(gop),
                       "-movflags", _MOVFLAGS, "-flush_packets", "1", "-f", "mp4"])


class StreamingVideoWriter:
    """Append uint8 frames [T, H, W, 3] block by block to an h264 mp4 that plays while it grows.

    Fragmented mp4 (one fragment per keyframe, a keyframe at least every ``keyframe_seconds``)
    is written under the partial name ``NAME.partial.mp4`` beside ``path``; every fragment on
    disk plays. x264 runs with ``tune=zerolatency``, so a frame leaves the encoder as it arrives
    and the ffmpeg process behind the pipe writes it moments later.

    A clean exit (``close()``, or leaving the ``with`` block normally) finishes the file and
    renames it to ``path`` (os.replace). On an exception inside the ``with`` block the encoder is
    still finished and the file is KEPT under its partial name, playable with every frame
    appended (nothing lost); it never appears under ``path``. With no frame appended it is
    removed. Frames are cropped to even sizes; every append must match the first one's size.
    """

    def __init__(self, path: str | Path, fps: float, keyframe_seconds: float = 1.0,
                 crf: int = 20):
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"StreamingVideoWriter writes .mp4 files, got {self.path}")
        for name, value in (("fps", fps), ("keyframe_seconds", keyframe_seconds)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {crf!r}")
        self.partial = partial_name(self.path)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.gop = max(1, round(float(self.fps) * keyframe_seconds))
        self.crf = int(crf)
        self.frames_written = 0
        self._size: tuple[int, int] | None = None  # (h, w) after the even crop
        self._sink = None  # started by the first append
        self._done = False

    def append(self, frames) -> None:
        """Encode uint8 frames [T, H, W, 3] (cropped to even H, W)."""
        if self._done:
            raise ValueError(f"{self.path}: append after close")
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        size = (frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2)
        if self._sink is None:
            if min(size) == 0:
                raise ValueError(f"frames must be at least 2x2 pixels, got {frames.shape[1:3]}")
            self._sink = _imageio_sink(self.partial, self.fps, size, self.gop, self.crf)
            self._sink.send(None)  # start the generator
            self._size = size
        elif size != self._size:
            raise ValueError(f"frame size {frames.shape[1:3]} (even crop {size}) differs from "
                             f"the first append's {self._size}")
        for frame in frames[:, : size[0], : size[1]]:  # [H, W, 3]
            self._sink.send(np.ascontiguousarray(frame))
            self.frames_written += 1

    def _finish(self) -> None:
        """Flush the encoder and close the file under its partial name."""
        self._done = True
        if self._sink is not None:
            self._sink.close()
        if not self.frames_written:
            self.partial.unlink(missing_ok=True)

    def close(self) -> None:
        """Finish the video and move it to its final name (idempotent)."""
        if self._done:
            return
        self._finish()
        if not self.frames_written:
            raise ValueError(f"no frames were appended to {self.path}")
        os.replace(self.partial, self.path)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif not self._done:
            self._finish()  # keep the playable partial file


def _check_size(size) -> tuple[int, int]:
    ok = (isinstance(size, (tuple, list)) and len(size) == 2
          and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size))
    if not ok:
        raise ValueError(f"size must be (height, width) of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _fit(image, size: tuple[int, int]) -> Tensor:
    """PIL image -> [3, h, w] in [-1, 1], resized to cover ``size`` and centre-cropped to it."""
    from PIL import Image, ImageOps

    h, w = size
    fitted = ImageOps.fit(image.convert("RGB"), (w, h), method=Image.Resampling.LANCZOS)
    x = torch.from_numpy(np.array(fitted)).permute(2, 0, 1)  # [3, h, w] uint8
    return x.float() / 127.5 - 1


def read_image(path: str | Path, size: tuple[int, int]) -> Tensor:
    """Any Pillow-readable image -> RGB [3, h, w] in [-1, 1] (cover-resize, centre crop).

    EXIF orientation is applied; grayscale, palette and alpha images become RGB (alpha dropped).
    """
    from PIL import Image, ImageOps

    size = _check_size(size)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return _fit(ImageOps.exif_transpose(image), size)
    except OSError as err:  # PIL.UnidentifiedImageError, truncated or corrupt data
        raise ValueError(f"cannot read image {path}: {err}") from err


@contextmanager
def video_frames(path: Path, max_frames: int | None = None):
    """Open a video: yield (fps, iterator of uint8 frames [H, W, 3]); decoding stops on exit."""
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    import imageio_ffmpeg

    limit = ["-frames:v", str(max_frames)] if max_frames else []
    reader = imageio_ffmpeg.read_frames(str(path), output_params=limit)
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as err:
        reader.close()
        raise ValueError(f"cannot read video {path}: {str(err).splitlines()[0]}") from err
    w, h = meta["size"]
    try:
        yield meta["fps"], (np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in reader)
    finally:
        reader.close()  # stops the ffmpeg process
def read_video(path: str | Path, size: tuple[int, int], max_frames: int | None = None
               ) -> Tensor:
    """A video -> [T, 3, h, w] in [-1, 1], each frame cover-resized and centre-cropped to ``size``.

    ``max_frames`` decodes only that many frames from the start, never the whole file.
    """
    from PIL import Image

    size = _check_size(size)
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"max_frames must be a positive int or None, got {max_frames!r}")
    path = Path(path)
    with video_frames(path, max_frames) as (_, frames):
        out = [_fit(Image.fromarray(f), size) for f in itertools.islice(frames, max_frames)]
    if not out:
        raise ValueError(f"video {path} has no frames")
    return torch.stack(out)  # [T, 3, h, w]


def caption_strip(labels: list[str], widths: list[int], gap: int = 4, height: int = 18
                  ) -> np.ndarray:
    """uint8 [height, W, 3]: each label centred over its panel, black on white (Pillow's
    built-in font)."""
    from PIL import Image, ImageDraw, ImageFont

    total = sum(widths) + gap * (len(widths) - 1)
    strip = Image.new("RGB", (total, height), "white")
    draw, font = ImageDraw.Draw(strip), ImageFont.load_default()
    x = 0
    for label, w in zip(labels, widths):
        box = draw.textbbox((0, 0), label, font=font)
        draw.text((x + (w - (box[2] - box[0])) // 2, (height - (box[3] - box[1])) // 2 - box[1]),
                  label, fill="black", font=font)
        x += w + gap
    return np.asarray(strip)


def side_by_side_files(paths: list, out_path: str | Path, fps: float | None = None,
                       gap: int = 4, labels: list[str] | None = None) -> int:
    """Stream two or more videos, frame by frame, into one side-by-side mp4; return its length.

    A white ``gap`` px column separates the inputs, shorter ones are padded black at the bottom
    (as ``side_by_side``), ``labels`` (one per input) are written in a caption strip above them,
    the output is as long as the shortest input, and its fps is ``fps`` or else the first
    input's. Only one frame per input is in memory at a time.
    """
    if len(paths) < 2:
        raise ValueError(f"side_by_side_files needs at least 2 videos, got {len(paths)}")
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} videos")
    with ExitStack() as stack:
        opened = [stack.enter_context(video_frames(Path(p))) for p in paths]
        with StreamingVideoWriter(out_path, fps or opened[0][0]) as writer:
            strip = None
            for frames in zip(*(it for _, it in opened)):
                frame = side_by_side(*(f[None] for f in frames), gap=gap)  # [1, H, W, 3]
                if labels is not None:
                    if strip is None:
                        strip = caption_strip(labels, [f.shape[1] for f in frames], gap)
                    frame = np.concatenate([strip[None], frame], axis=1)
                writer.append(frame)
    return writer.frames_written
