"""TAEHV's decoder: the tiny video autoencoder the Wan community uses for previews and real time,
as a light alternative to the Wan2.1 VAE for video out (``decoder: taehv``).

Our implementation of the decoder of madebyollin/taehv (``taehv.py``, class ``TAEHV``, base
variant) for its Wan2.1 weights ``taew2_1.pth`` (or ``safetensors/taew2_1.safetensors``). The
public file is a flat state dict of ``encoder.N.*`` and ``decoder.N.*`` tensors, ``N`` the index
in an ``nn.Sequential``; this module keeps those indices, so the decoder keys load as they are
(the encoder keys are not needed for video out and are skipped). Facts of the architecture:

- input: the DiT's normalised latents as they are (the public diffusers wrapper declares mean 0,
  std 1, scaling 1); a ``tanh(x / 3) * 3`` clamp, a 3x3 conv to 256 channels, then three stages
  of 3 ``MemBlock``s, a 2x nearest upsampling in space, a ``TGrow`` (1x1 conv to ``stride * C``
  channels, split into ``stride`` time steps) and a 3x3 conv down to 128, 64, 64 channels;
  ReLU and a 3x3 conv to RGB in [0, 1] (we return [-1, 1], as the Wan VAE).
- time: the first ``TGrow`` keeps the frame rate (stride 1), the other two double it: 4 video
  frames per latent frame; the first 3 decoded frames are dropped, so F latent frames make
  ``4F - 3`` video frames, as the Wan VAE's ``1 + 4(F - 1)``. A public file may hold the first
  ``TGrow`` with stride-2 weights; the last time step's channels are used, as upstream does.
- ``MemBlock(x, past)``: ``relu(conv3(relu(conv2(relu(conv1(cat(x, past)))))) + x)`` where
  ``past`` is the block's input at the previous time step (zeros at the start): the decoder is
  causal with a one-step memory per block, so a stream of latent blocks decodes each block in
  parallel over time and carries, per ``MemBlock``, only its last input frame.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrag_framework.files import read_state

from .loading import CheckpointError

TAEHV_FILE = "wan_models/taew2_1.pth"
TAEHV_SOURCE = "https://github.com/madebyollin/taehv (taew2_1.pth or safetensors/taew2_1.safetensors)"
WIDTHS = (256, 128, 64, 64)
TIME_STRIDES = (1, 2, 2)  # decoder_time_upscale (False, True, True) of the Wan weights


def conv3x3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Residual 3-conv block over the concatenation of a frame and its predecessor's input."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Sequential(conv3x3(2 * dim, dim), nn.ReLU(), conv3x3(dim, dim), nn.ReLU(),
                                  conv3x3(dim, dim))

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        return F.relu(self.conv(torch.cat((x, past), dim=1)) + x)


class TGrow(nn.Module):
    """Frames [N, C, H, W] -> ``stride`` times as many [N * stride, C, H, W], in time order."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(dim, dim * stride, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return self.conv(x).reshape(n * self.stride, c, h, w)  # [N, s*C, H, W] -> [N*s, C, H, W]


class TAEHVDecoder(nn.Module):
    """The decoder half of TAEHV; ``decoder.N`` keys as in the public file."""

    def __init__(self, latent_channels: int = 16):
        super().__init__()
        w = WIDTHS
        layers: list[nn.Module] = [Clamp(), conv3x3(latent_channels, w[0]), nn.ReLU()]
        for stage, stride in enumerate(TIME_STRIDES):
            layers += [MemBlock(w[stage]), MemBlock(w[stage]), MemBlock(w[stage]),
                       nn.Upsample(scale_factor=2), TGrow(w[stage], stride),
                       conv3x3(w[stage], w[stage + 1], bias=False)]
        layers += [nn.ReLU(), conv3x3(w[-1], 3)]
        self.decoder = nn.Sequential(*layers)
        self.latent_channels = latent_channels
        self.time_stride = 1
        for stride in TIME_STRIDES:
            self.time_stride *= stride
        self.trim = self.time_stride - 1  # decoded frames dropped at the start of a stream

    def stream_decoder(self) -> TAEHVStream:
        return TAEHVStream(self)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents [B, F, C, h, w] -> video [B, 4F - 3, 3, 8h, 8w] in [-1, 1]."""
        return self.stream_decoder().decode(latents)


class TAEHVStream:
    """Decodes consecutive latent blocks of one batch of videos, carrying each ``MemBlock``'s last
    input frame; block by block it returns exactly the frames of one ``decode`` of the whole."""

    def __init__(self, model: TAEHVDecoder):
        self.model = model
        self.past: dict[int, Tensor] = {}  # MemBlock index -> its last input [B, 1, C, H, W]
        self.to_trim = model.trim

    def decode(self, latents: Tensor) -> Tensor:
        """Latents [B, F, C, h, w] -> video frames [B, f, 3, 8h, 8w] in [-1, 1] (the first call
        ``4F - 3`` frames, each later call ``4F``)."""
        m = self.model
        if latents.ndim != 5 or latents.shape[2] != m.latent_channels or latents.shape[1] < 1:
            raise ValueError(f"wan taehv: decode expects latents [B, F >= 1, "
                             f"{m.latent_channels}, h, w], got {list(latents.shape)}")
        weight = m.decoder[1].weight
        fmt = torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format
        b = latents.shape[0]
        x = latents.to(weight).flatten(0, 1).contiguous(memory_format=fmt)  # [B*F, C, h, w]
        for i, layer in enumerate(m.decoder):
            if isinstance(layer, MemBlock):
                frames = x.unflatten(0, (b, -1))  # [B, T, C, H, W], time inner
                before = self.past.get(i)
                if before is None:
                    before = torch.zeros_like(frames[:, :1])
                self.past[i] = frames[:, -1:].clone()
                past = torch.cat((before, frames[:, :-1]), dim=1).flatten(0, 1)
                x = layer(x, past.contiguous(memory_format=fmt))
            else:
                x = layer(x)
        video = x.unflatten(0, (b, -1))[:, self.to_trim:]  # [B, T', 3, H, W]
        self.to_trim = 0
        return video.clamp(0, 1) * 2 - 1


def random_taehv(seed: int = 0, latent_channels: int = 16) -> TAEHVDecoder:
    """A decoder with PyTorch's default init, seeded without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TAEHVDecoder(latent_channels)
    return model.eval().requires_grad_(False)


def _read(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"wan taehv: {path} not found: put taew2_1.pth there (from "
                              f"{TAEHV_SOURCE}) or set decoder_weights")
    state = read_state(path, f"a TAEHV state dict (taew2_1.pth from {TAEHV_SOURCE})")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"wan taehv: {path}: expected a flat dict of tensors "
                              f"(taew2_1.pth from {TAEHV_SOURCE})")
    return state


def load_taehv(path: str | Path) -> TAEHVDecoder:
    """The decoder with the ``decoder.*`` weights of a public TAEHV file (``taew2_1.pth`` or
    ``.safetensors``), loaded strictly, on CPU, in eval mode without gradients; the latent
    channels are read from the file."""
    path = Path(path)
    state = {k: v for k, v in _read(path).items() if k.startswith("decoder.")}
    first = state.get("decoder.1.weight")
    model = TAEHVDecoder(16 if first is None else int(first.shape[1]))
    expected = model.state_dict()
    for i, layer in enumerate(model.decoder):
        key = f"decoder.{i}.conv.weight"
        if isinstance(layer, TGrow) and key in state \
                and state[key].shape[0] > expected[key].shape[0]:
            state[key] = state[key][-expected[key].shape[0]:]  # the last time step's channels
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {list(state[k].shape)} (model {list(v.shape)})" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    parts = [f"{name} {', '.join(items[:6])}" for name, items in
             (("missing", missing), ("unexpected", unexpected), ("wrong shapes", shapes)) if items]
    if parts:
        raise CheckpointError(f"wan taehv: {path} is not a TAEHV Wan2.1 decoder "
                              f"({'; '.join(parts)}); expected taew2_1 from {TAEHV_SOURCE}")
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
