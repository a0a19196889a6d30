"""The Wan2.1 video VAE: encode, decode, and a streaming decoder for block-by-block generation.

Our implementation of Wan2.1 ``wan/modules/vae.py`` (``WanVAE_`` built by ``_video_vae``;
checkpoint ``Wan2.1_VAE.pth`` in the Wan2.1-T2V-1.3B folder). The state dict keys are the
public ones (``encoder.conv1.weight``, ``encoder.downsamples.N...``, ``encoder.middle.1.to_qkv``,
``encoder.head.2``, ``conv1``, ``conv2``, ``decoder.upsamples.N...``, ``decoder.head.2``), so the
file loads as it is. Stride 4 in time and 8 in space: a video of ``1 + 4k`` frames of HxW maps to
``1 + k`` latent frames of 16 x H/8 x W/8.

Chunking and causal cache as upstream: the encoder sees frame 0 alone, then chunks of 4 frames;
the decoder one latent frame at a time (1 pixel frame for the first, 4 for each later one).
Because the decoder is causal and carries its cache, ``StreamDecoder`` can decode the latent
blocks of an autoregressive generator as they come, and matches a one-shot ``decode``; it can
also take several latent frames per pass (``chunk``), the same pixels up to float rounding in
fewer, larger kernels (the backbone's path on CUDA, docs/vae.md).
Latents are normalised per channel: ``(mu - mean) / std`` with the public constants.
Runs in the weights' dtype (fp32 on CPU, bf16 on GPU); memory stays bounded by one chunk of
activations, the cache and the output.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor, nn

from lrag_framework.files import read_state, state_mismatch

from .loading import CheckpointError
from .presets import WAN_BASE_DOWNLOAD
from .vae_blocks import (AttentionBlock, CausalCache, CausalConv3d, Downsample, ResidualBlock,
                         RMSNorm, Upsample, run_layers)

VAE_FILE = "wan_models/Wan2.1-T2V-1.3B/Wan2.1_VAE.pth"

# Per-channel statistics of Wan2.1 latents (upstream ``WanVAE.__init__``).
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclass(frozen=True)
class VAEConfig:
    """Sizes of the VAE; defaults are Wan2.1's (``_video_vae``: dim 96, z_dim 16, no attention
    in the down/up stages)."""

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latent_mean: tuple[float, ...] = LATENT_MEAN
    latent_std: tuple[float, ...] = LATENT_STD

    def __post_init__(self):
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"wan vae: temporal_downsample {self.temporal_downsample} needs one "
                             f"entry per resample stage ({len(self.dim_mult) - 1})")
        if len(self.latent_mean) != self.z_dim or len(self.latent_std) != self.z_dim:
            raise ValueError(f"wan vae: latent_mean/latent_std have {len(self.latent_mean)}/"
                             f"{len(self.latent_std)} entries, z_dim is {self.z_dim}")
        if min(self.latent_std) <= 0:
            raise ValueError(f"wan vae: latent_std must be positive, got {self.latent_std}")
        if self.dim % 2:
            raise ValueError(f"wan vae: dim {self.dim} must be even (upsamples halve channels)")

    @property
    def time_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def space_stride(self) -> int:
        return 2 ** len(self.temporal_downsample)


def middle_blocks(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim, dropout), AttentionBlock(dim),
                         ResidualBlock(dim, dim, dropout))


class Encoder3d(nn.Module):
    """One chunk of video [B, 3, t, H, W] -> [B, 2 z_dim, t', H/8, W/8] (mean | log-variance)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers = []
        for i, (in_dim, out_dim) in enumerate(pairwise(dims)):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                in_dim = out_dim
            if i < len(cfg.temporal_downsample):
                layers.append(Downsample(out_dim, temporal=cfg.temporal_downsample[i]))
        self.downsamples = nn.Sequential(*layers)
        self.middle = middle_blocks(dims[-1], cfg.dropout)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(),
                                  CausalConv3d(dims[-1], cfg.z_dim * 2, 3, padding=1))

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        x = run_layers([self.conv1, *self.downsamples, *self.middle, *self.head], x, cache)
        cache.first = False
        return x


class Decoder3d(nn.Module):
    """One chunk of latents [B, z_dim, f, h, w] -> pixels [B, 3, f', 8h, 8w]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        temporal = tuple(reversed(cfg.temporal_downsample))
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = middle_blocks(dims[0], cfg.dropout)
        layers, in_dim = [], dims[0]
        for i, out_dim in enumerate(dims[1:]):
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                in_dim = out_dim
            if i < len(temporal):
                layers.append(Upsample(out_dim, temporal=temporal[i]))
                in_dim = out_dim // 2
        self.upsamples = nn.Sequential(*layers)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(),
                                  CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        x = run_layers([self.conv1, *self.middle, *self.upsamples, *self.head], x, cache)
        cache.first = False
        return x


class WanVAE(nn.Module):
    """Wan2.1 video VAE. ``encode`` returns the normalised posterior mean (no sampling)."""

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder3d(config)
        self.conv1 = CausalConv3d(config.z_dim * 2, config.z_dim * 2, 1)  # -> mean | log-var
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)  # latent -> decoder input
        self.decoder = Decoder3d(config)

    def latent_stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std, [1, z_dim, 1, 1, 1] in ``like``'s dtype and device."""
        def column(values):
            return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1)

        return column(self.config.latent_mean), column(self.config.latent_std)

    def encode(self, video: Tensor) -> Tensor:
        """Video [B, 3, 1 + 4k, H, W] in [-1, 1] -> normalised latents [B, 16, 1 + k, H/8, W/8]."""
        cfg = self.config
        s, p = cfg.time_stride, cfg.space_stride
        if (video.ndim != 5 or video.shape[1] != 3 or (video.shape[2] - 1) % s
                or video.shape[3] % p or video.shape[4] % p):
            raise ValueError(f"wan vae: encode expects a video [B, 3, 1 + {s}k, H, W] with H and "
                             f"W divisible by {p}, got {list(video.shape)}")
        cache = CausalCache()
        chunks = [video[:, :, :1]] + [video[:, :, i:i + s] for i in range(1, video.shape[2], s)]
        x = torch.cat([self.encoder(chunk.to(self.conv1.weight), cache) for chunk in chunks],
                      dim=2)  # [B, 2z, 1 + k, H/p, W/p]: frame 0 alone, then s frames a chunk
        mu = self.conv1(x)[:, :cfg.z_dim]  # [B, z, 1 + k, H/p, W/p]
        mean, std = self.latent_stats(mu)
        return (mu - mean) / std

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, 16, F, h, w] -> video [B, 3, 1 + 4(F - 1), 8h, 8w] in [-1, 1]."""
        return self.stream_decoder().decode(latents)

    def stream_decoder(self, chunk: int | None = 1) -> StreamDecoder:
        """A decoder fed the latents of one video block by block, in order; ``chunk``: latent
        frames per decoder pass (None: a whole block after the first frame)."""
        return StreamDecoder(self, chunk)

    def decode_frames(self, z: Tensor, cache: CausalCache) -> Tensor:
        """Un-normalised latent frames [B, z, f, h, w] -> 1 (a stream's first frame, alone) or
        4f frames [B, 3, ...]."""
        return self.decoder(self.conv2(z), cache)

    def channels_last(self) -> WanVAE:
        """The 3-D conv weights in ``channels_last_3d`` (faster cuDNN kernels on CUDA; the 2-D
        convs of the attention and spatial resamplers stay as they are). ``StreamDecoder`` then
        feeds frames in the same format."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
        return self

    def compile_decoder(self) -> None:
        """torch.compile ``decode_frames`` (one graph for a stream's first frame, one for each
        chunk size after it); compiled at the first decode."""
        self.decode_frames = torch.compile(self.decode_frames, dynamic=False)


@contextmanager
def fast_convs(device: torch.device):
    """On CUDA, let cuDNN pick its fastest conv algorithms for the decoder's fixed shapes
    (``cudnn.benchmark``) for the duration of a decode; the flag is restored after."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class StreamDecoder:
    """Decodes consecutive latent blocks of one video, carrying the causal cache between calls.

    Fed blocks in order it returns, block by block, the frames ``WanVAE.decode`` returns for
    their concatenation: the first call ``1 + 4(f - 1)`` frames, each later call ``4f``. With
    ``chunk=1`` (upstream's way: one latent frame per decoder pass) exactly those; with larger
    chunks (None: all of a block's frames after the stream's first in one pass) the same up to
    float rounding, since every causal layer sees the same inputs, in fewer, larger kernels.
    """

    def __init__(self, vae: WanVAE, chunk: int | None = 1):
        if chunk is not None and chunk < 1:
            raise ValueError(f"wan vae: chunk must be >= 1 latent frame (or None), got {chunk}")
        self.vae, self.chunk = vae, chunk
        self.cache = CausalCache()

    def decode(self, block: Tensor) -> Tensor:
        """Normalised latents [B, 16, f, h, w] -> video frames [B, 3, f', 8h, 8w] in [-1, 1]."""
        vae, cfg = self.vae, self.vae.config
        if block.ndim != 5 or block.shape[1] != cfg.z_dim or block.shape[2] < 1:
            raise ValueError(f"wan vae: decode expects latents [B, {cfg.z_dim}, F >= 1, h, w], "
                             f"got {list(block.shape)}")
        s, p = cfg.time_stride, cfg.space_stride
        z = block.to(vae.conv2.weight)
        mean, std = vae.latent_stats(z)
        b, _, f, h, w = z.shape
        frames = f * s - (s - 1 if self.cache.first else 0)
        out = z.new_empty(b, 3, frames, h * p, w * p)
        fmt = torch.channels_last_3d if vae.conv2.weight.is_contiguous(
            memory_format=torch.channels_last_3d) else torch.contiguous_format
        t = i = 0
        with fast_convs(z.device):
            while i < f:  # a stream's first frame alone, as upstream, then chunks
                n = 1 if self.cache.first else min(self.chunk or f, f - i)
                frames = (z[:, :, i:i + n] * std + mean).contiguous(memory_format=fmt)
                x = vae.decode_frames(frames, self.cache)  # [B, 3, 1 | s n, H, W]
                out[:, :, t:t + x.shape[2]] = x.clamp(-1, 1)
                t, i = t + x.shape[2], i + n
        return out


def random_vae(config: VAEConfig = VAEConfig(), seed: int = 0) -> WanVAE:
    """A VAE with the upstream init (PyTorch defaults, attention output zeroed), seeded without
    touching the global RNG: for benchmarks and tests."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanVAE(config)
    return model.eval().requires_grad_(False)


def _read_state(path: Path) -> dict[str, Tensor]:
    what = "the Wan2.1 VAE state dict (Wan2.1_VAE.pth)"
    if not path.is_file():
        raise CheckpointError(f"wan vae: {path} not found: expected {what}, e.g. {VAE_FILE}. "
                              f"Download it with: {WAN_BASE_DOWNLOAD}")
    state = read_state(path, what)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"wan vae: {path}: expected {what}, a flat dict of tensors")
    return state


def _check_state(model: WanVAE, state: dict[str, Tensor], path: Path) -> None:
    """Every parameter present with its shape and nothing left over; else one error."""
    problem = state_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(f"wan vae: {path} does not match the VAE ({problem}); expected "
                              f"the Wan2.1 VAE ({VAE_FILE}, from: {WAN_BASE_DOWNLOAD}) and a "
                              f"VAEConfig of its sizes")


def load_vae(path: str | Path, config: VAEConfig | None = None) -> WanVAE:
    """The VAE with the weights of a ``Wan2.1_VAE.pth`` (or ``.safetensors``) state dict, loaded
    strictly, on CPU in the file's dtype, in eval mode without gradients. ``config`` None: the
    defaults with the base width read from the file."""
    path = Path(path)
    state = _read_state(path)
    if config is None:
        conv = state.get("encoder.conv1.weight")
        config = VAEConfig() if conv is None else VAEConfig(dim=int(conv.shape[0]))
    with torch.device("meta"):
        model = WanVAE(config)
    _check_state(model, state, path)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
