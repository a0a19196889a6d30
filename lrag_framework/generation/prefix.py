"""Start frames of a run (``RunConfig.prefix``): ground truth, a latents/pixels file, an image or
a video's first frames, as latents [S, P, C, H, W]. Read and checked before anything is
written, so a bad start leaves no run directory behind."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..config import ConfigError, RunConfig
from ..files import read_tensors


def load_prefix(cfg: RunConfig, backbone, references: list) -> Tensor | None:
    """The configured start frames of every stream, or None."""
    p = cfg.prefix
    if p is None:
        return None
    if p.source == "reference":
        if any(r is None for r in references):
            raise ConfigError([f"prefix.source: backbone {cfg.backbone.name!r} derives no "
                               f"reference frames from these conditionings"])
        return torch.stack([r.latents[:p.frames] for r in references])
    path = Path(p.path)
    if not path.is_file():
        raise ConfigError([f"prefix.path: {path} not found"])
    if p.source in ("image", "video"):
        return _media_prefix(p, path, backbone, len(references))
    tensors = read_tensors(path, what=f"a safetensors file with a {p.kind!r} tensor")
    if p.kind not in tensors:
        raise ConfigError([f"prefix.path: {path} has no tensor {p.kind!r} (has {sorted(tensors)})"])
    x = tensors[p.kind].float()
    n = len(references)
    x = x[None].expand(n, *x.shape) if x.ndim == 4 else x
    if x.ndim != 5 or x.shape[0] != n:
        raise ConfigError([f"prefix: expected [F, ...] or [{n}, F, ...], got {list(x.shape)}"])
    x = x[:, :p.frames]
    return backbone.encode(x) if p.kind == "pixels" else x


def _media_prefix(p, path: Path, backbone, streams: int) -> Tensor:
    """Latents [S, F, C, H, W] of an image (one frame) or of a video's first frames, resized
    and centre-cropped to the backbone's frame size and encoded by it."""
    from ..outputs.media import read_image, read_video

    spec = backbone.spec
    size = spec.pixel_size or tuple(spec.latent_shape[1:])
    stride = spec.frames_per_latent
    try:
        if p.source == "image":
            pixels = read_image(path, size)[None]  # [1, 3, h, w]
        else:
            pixels = read_video(path, size,
                                None if p.frames is None else 1 + stride * (p.frames - 1))
            pixels = pixels[:1 + (len(pixels) - 1) // stride * stride]  # whole latent frames
    except ValueError as err:
        raise ConfigError([f"prefix.path: {err}"]) from None
    latents = backbone.encode(pixels[None]).float().cpu()  # [1, F, C, H, W]
    return latents.expand(streams, *latents.shape[1:])


def check_prefix(prefix: Tensor, streams: int, num_frames: int, latent_shape: tuple) -> None:
    """A prefix must fit the run: [S, P, C, H, W] with the backbone's frame shape, P <=
    num_frames, finite values."""
    errors = []
    if prefix.ndim != 5 or prefix.shape[0] != streams or tuple(prefix.shape[2:]) != latent_shape:
        errors.append(f"prefix: expected latents [{streams}, P, {', '.join(map(str, latent_shape))}]"
                      f", got {list(prefix.shape)}")
    elif prefix.shape[1] > num_frames:
        errors.append(f"prefix: {prefix.shape[1]} frames do not fit generation.num_frames "
                      f"{num_frames}")
    elif not torch.isfinite(prefix).all():
        errors.append("prefix: holds NaN or infinite values")
    if errors:
        raise ConfigError(errors)
