"""The ``latent_ae`` embedder: the convolutional autoencoder of LongLive-RAG (arXiv 2606.02553).

Encoder: per hidden dim a stride-2 conv + GroupNorm + SiLU + residual block, a final
GroupNorm + SiLU, global average pooling and a linear layer to ``latent_dim``. Decoder: a linear
layer back to the bottleneck feature map, nearest-upsample + conv stages, cropped to ``[C, H, W]``.

Module and attribute names follow the public ``ae/model.py`` of qixinhu11/LongLive-RAG so its
state-dict keys (``encoder.conv_stack.0.weight``, ``decoder.fc.0.weight``, ...) load 1:1; the code
is our own. Weight formats are in ``ae_weights``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrag_framework.interfaces import TrainableEmbedder


@dataclass(frozen=True)
class AEShape:
    """The architecture hyper-parameters (what a checkpoint's config must describe)."""

    in_channels: int = 16
    spatial_h: int = 60
    spatial_w: int = 104
    latent_dim: int = 1024
    hidden_dims: tuple[int, ...] = (64, 128, 256)

    def to_json(self) -> dict:
        return {**asdict(self), "hidden_dims": list(self.hidden_dims)}


def group_count(channels: int) -> int:
    """GroupNorm groups: 32 when it divides ``channels``, else 16, 8, 4, 1 (as upstream)."""
    return next(g for g in (32, 16, 8, 4, 1) if channels % g == 0)


def conv_norm_act(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
            nn.GroupNorm(group_count(c_out), c_out), nn.SiLU()]


class ResBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))); the last conv starts at zero (identity block)."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(group_count(dim), dim), nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1),
            nn.GroupNorm(group_count(dim), dim), nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def downsampled(size: int, times: int) -> int:
    for _ in range(times):
        size = (size - 1) // 2 + 1  # conv k=3, stride 2, padding 1
    return size


class Encoder(nn.Module):
    def __init__(self, shape: AEShape):
        super().__init__()
        layers, ch = [], shape.in_channels
        for hd in shape.hidden_dims:
            layers += [*conv_norm_act(ch, hd, stride=2), ResBlock(hd)]
            ch = hd
        self.conv_stack = nn.Sequential(*layers)
        self.final_norm = nn.Sequential(nn.GroupNorm(group_count(ch), ch), nn.SiLU())
        self.fc = nn.Linear(ch, shape.latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.final_norm(self.conv_stack(x))  # [N, C', H', W']
        return self.fc(h.mean(dim=(2, 3)))  # [N, latent_dim]


class Decoder(nn.Module):
    def __init__(self, shape: AEShape):
        super().__init__()
        dims = list(reversed(shape.hidden_dims))
        n = len(dims)
        self.feat_shape = (dims[0], downsampled(shape.spatial_h, n),
                           downsampled(shape.spatial_w, n))
        self.out_hw = (shape.spatial_h, shape.spatial_w)
        flat = self.feat_shape[0] * self.feat_shape[1] * self.feat_shape[2]
        self.fc = nn.Sequential(nn.Linear(shape.latent_dim, flat), nn.SiLU())
        layers = []
        for c_in, c_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), *conv_norm_act(c_in, c_out),
                       ResBlock(c_out)]
        self.upsample_stack = nn.Sequential(*layers)
        self.final = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                   nn.Conv2d(dims[-1], shape.in_channels, 3, padding=1))

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(-1, *self.feat_shape)  # [N, C', H', W']
        h = self.final(self.upsample_stack(h))  # [N, C, 2^n H', 2^n W'] >= [N, C, H, W]
        return h[:, :, : self.out_hw[0], : self.out_hw[1]]


class LatentAE(nn.Module):
    """Frames [N, C, H, W] -> (reconstruction [N, C, H, W], raw embedding [N, latent_dim])."""

    def __init__(self, shape: AEShape):
        super().__init__()
        if not shape.hidden_dims:
            raise ValueError("hidden_dims must name at least one stage")
        self.shape = shape
        self.encoder = Encoder(shape)
        self.decoder = Decoder(shape)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming convs, Xavier linears, zero biases, zero last conv of every residual block."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.block[-1].weight)
                nn.init.zeros_(m.block[-1].bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encoder(x)  # [N, latent_dim]
        return self.decoder(z), z


class LatentAEEmbedder(TrainableEmbedder):
    """``embed``: the encoder's output, L2-normalised; frames are checked against ``[C, H, W]``.

    Trainable (``interfaces.TrainableEmbedder``): ``model`` maps frames to (reconstruction, raw
    embedding); ``save`` writes the folder that the ``weights`` param loads back.
    """

    def __init__(self, model: LatentAE):
        self.model = model.eval()

    @property
    def shape(self) -> AEShape:
        return self.model.shape

    @torch.no_grad()
    def embed(self, latents: Tensor) -> Tensor:
        s = self.shape
        want = (s.in_channels, s.spatial_h, s.spatial_w)
        if latents.ndim != 4 or tuple(latents.shape[1:]) != want:
            raise ValueError(f"latent_ae expects frames [N, {want[0]}, {want[1]}, {want[2]}], "
                             f"got {list(latents.shape)}")
        param = next(self.model.parameters())
        z = self.model.encoder(latents.to(param.device, param.dtype))  # [N, latent_dim]
        return F.normalize(z.float(), dim=-1)

    def save(self, folder) -> None:
        """Write the weights folder (config.json + model.safetensors) that ``weights`` loads."""
        from .ae_weights import save_latent_ae

        save_latent_ae(self.model, folder)

    def to(self, device: torch.device | str) -> LatentAEEmbedder:
        self.model.to(device)
        return self
