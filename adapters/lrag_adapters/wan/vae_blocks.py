"""Layers of the Wan2.1 video VAE, run causally in time one chunk of frames at a time.

Semantics and parameter names follow Wan2.1 ``wan/modules/vae.py`` (``CausalConv3d``,
``RMS_norm``, ``ResidualBlock``, ``AttentionBlock``, ``Resample``); the ``nn.Sequential`` indices
below are part of the checkpoint format (``residual.2.weight``, ``resample.1.weight``, ...).

A chunked pass carries a ``CausalCache`` from chunk to chunk: each 3-tap causal conv keeps the
last 2 input frames it saw (upstream's ``feat_cache`` with ``CACHE_T = 2``; zeros before the
start), so running chunk by chunk equals running the whole sequence with 2 zero frames padded on
the left. The cache has the same entries, shapes and strides after every chunk. The temporal
resamplers treat the first chunk (a single frame) specially, as upstream does: it passes through
without the temporal conv, so frame 0 maps to one frame and every later frame to 2 (upsample) or
half a frame (downsample).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class CausalCache:
    """What a chunked encoder or decoder pass carries between chunks.

    ``past[layer]``: the last input frames a layer needs from earlier chunks.
    ``first``: true while the first chunk runs (the temporal resamplers skip their conv).
    """

    def __init__(self):
        self.past: dict[nn.Module, Tensor] = {}
        self.first = True


class CausalConv3d(nn.Conv3d):
    """3-D conv, causal in time: ``2 * padding_t`` past frames on the left (the cached frames of
    earlier chunks, zeros before the start), none on the right; spatial padding as usual."""

    def __init__(self, in_dim: int, out_dim: int, kernel, padding=0, stride=1):
        super().__init__(in_dim, out_dim, kernel, stride=stride, padding=0)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self.time_pad = 2 * pt
        self.space_pad = (pw, pw, ph, ph)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        # x [B, C, T, H, W]
        pad_t = self.time_pad
        if pad_t and cache is not None:
            past = cache.past.get(self)  # [B, C, time_pad, H, W]
            if past is None:  # nothing before: the zeros the causal padding adds
                past = frames_like(x, pad_t).zero_()
            x = torch.cat([past, x], dim=2)
            pad_t = 0
            cache.past[self] = frames_like(x, self.time_pad).copy_(x[:, :, -self.time_pad:])
        return super().forward(F.pad(x, (*self.space_pad, pad_t, 0)))


def frames_like(x: Tensor, frames: int) -> Tensor:
    """An uninitialised dense [B, C, frames, H, W] in ``x``'s dtype, device and memory format:
    the cache's tensors keep one shape and one set of strides from chunk to chunk (a compiled
    decoder then traces no new graph for them)."""
    fmt = (torch.channels_last_3d if not x.is_contiguous()
           and x.is_contiguous(memory_format=torch.channels_last_3d) else torch.contiguous_format)
    b, c, _, h, w = x.shape
    return torch.empty((b, c, frames, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)


class RMSNorm(nn.Module):
    """L2-normalise over channels (dim 1), times sqrt(C) and a learnt per-channel gain."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * (2 if images else 3)))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """norm, SiLU, causal conv, norm, SiLU, dropout, causal conv; plus a 1x1x1 shortcut when the
    width changes."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        # x [B, C_in, T, H, W] -> [B, C_out, T, H, W]
        return run_layers(self.residual, x, cache) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no mixing across time).
    q/k/v and the projection input are laid out as upstream (contiguous, channels last for the
    attention), so the same kernels run and the results agree bit for bit."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)  # upstream's init

    def forward(self, x: Tensor) -> Tensor:
        b, h = x.shape[0], x.shape[3]
        y = self.to_qkv(self.norm(rearrange(x, "b c t h w -> (b t) c h w")))  # [BT, 3C, H, W]
        y = rearrange(y, "n c h w -> n 1 (h w) c").contiguous()  # [BT, 1, HW, 3C]
        q, k, v = y.chunk(3, dim=-1)  # [BT, 1, HW, C] each
        y = F.scaled_dot_product_attention(q, k, v)  # [BT, 1, HW, C]
        y = self.proj(rearrange(y, "n 1 (h w) c -> n c h w", h=h).contiguous())  # [BT, C, H, W]
        return x + rearrange(y, "(b t) c h w -> b c t h w", b=b)


def per_frame(layer: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2-D layer to every frame: [B, C, T, H, W] -> [B, C', T, H', W']."""
    t = x.shape[2]
    y = layer(rearrange(x, "b c t h w -> (b t) c h w"))
    return rearrange(y, "(b t) c h w -> b c t h w", t=t)


class Downsample(nn.Module):
    """Halve H and W (zero pad right/bottom, 3x3 conv stride 2); if temporal, also halve time
    after the first frame: frame 0 passes as is, then a 3-tap conv of stride 2 over
    ``[last frame of the previous chunk, this chunk]`` (2 frames in -> 1 out)."""

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        x = per_frame(self.resample, x)  # [B, C, T, H/2, W/2]
        if self.time_conv is None:
            return x
        past = cache.past.get(self)
        cache.past[self] = x[:, :, -1:].clone()
        if past is None:  # the first chunk: one frame, kept as is
            return x
        return self.time_conv(torch.cat([past, x], dim=2))  # [B, C, T/2, H/2, W/2]


class Upsample(nn.Module):
    """Double H and W (nearest, then a 3x3 conv that halves the channels); if temporal, also
    double time after the first frame: a causal 3-tap conv makes 2C channels, read as C channels
    of frames 2i and 2i+1. The first chunk (frame 0) skips it, so the conv's history starts
    with zeros at frame 1."""

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                      nn.Conv2d(dim, dim // 2, 3, padding=1))
        self.time_conv = (CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
                          if temporal else None)

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        if self.time_conv is not None and cache.first:  # its history starts with zeros
            cache.past[self.time_conv] = frames_like(x, self.time_conv.time_pad).zero_()
        elif self.time_conv is not None:
            y = self.time_conv(x, cache)  # [B, 2C, T, H, W]
            x = rearrange(y, "b (two c) t h w -> b c (t two) h w", two=2)  # [B, C, 2T, H, W]
        return per_frame(self.resample, x)  # [B, C/2, T', 2H, 2W]


CACHED = (CausalConv3d, ResidualBlock, Downsample, Upsample)


def run_layers(layers, x: Tensor, cache: CausalCache) -> Tensor:
    """Apply layers in order, handing the cache to those that carry state across chunks."""
    for layer in layers:
        x = layer(x, cache) if isinstance(layer, CACHED) else layer(x)
    return x
