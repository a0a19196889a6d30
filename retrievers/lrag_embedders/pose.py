"""The ``pose`` embedder: a retrieval key from where the conditioning puts a frame.

A conditioned embedder (plugin API 3): it reads each frame's signal row (``[N, S]``, e.g. the
camera position a camera path's actions integrate to) and maps it to Fourier features of a
Gaussian kernel, so that the cosine of two descriptors is the kernel of the two positions,
``mean_s exp(-(p_s - q_s)^2 / (2 sigma^2))`` (periodic with ``period``; exact up to a truncation
below 4e-4). Ranking by it is ranking by distance, whatever the frames look like, so a generator
that drifts does not blur the key. With ``latent_weight`` w > 0 the descriptor also carries the
frame's ``avg_pool`` descriptor: cosine = w * avg_pool cosine + (1 - w) * kernel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lrag_framework.interfaces import Embedder


class PoseEmbedder(Embedder):
    """[N, C, H, W] + signals [N, S] -> [N, D] unit vectors, D = S (2J + 1) (+ C)."""

    conditioned = True

    def __init__(self, sigma: float = 0.5, period: float = 64.0, latent_weight: float = 0.0):
        if not (sigma > 0 and period > 2 * sigma and 0 <= latent_weight < 1):
            raise ValueError(f"pose: need sigma > 0, period > 2 sigma, 0 <= latent_weight < 1; "
                             f"got sigma {sigma}, period {period}, latent_weight {latent_weight}")
        self.sigma, self.period, self.latent_weight = sigma, period, latent_weight
        harmonics = math.ceil(4 * period / (2 * math.pi * sigma))  # exp(-8) at the last one
        self.omega = 2 * math.pi / period * torch.arange(harmonics + 1, dtype=torch.float64)
        w = torch.exp(-0.5 * (self.omega * sigma) ** 2)
        w[1:] *= 2  # cos and sin of each harmonic carry the +-j pair of the series
        self.amplitude = (w / w.sum()).sqrt()  # [J + 1]: k(0) = 1 per axis

    def embed(self, latents: Tensor, signals: Tensor | None = None) -> Tensor:
        if latents.ndim != 4:
            raise ValueError(f"pose expects frames [N, C, H, W], got {list(latents.shape)}")
        if signals is None or signals.ndim != 2 or len(signals) != len(latents):
            got = None if signals is None else list(signals.shape)
            raise ValueError(f"pose needs one signal row per frame [{len(latents)}, S], got {got}")
        p = signals.double().cpu()  # [N, S]
        if not bool(torch.isfinite(p).all()):
            raise ValueError("pose: frame signals contain NaN or inf")
        far = float(p.abs().max()) if p.numel() else 0.0
        if far > self.period / 2:
            raise ValueError(f"pose: a frame signal of {far:.3g} leaves the key's range "
                             f"+-period/2 = {self.period / 2:g}: raise params.period")
        phase = p[:, :, None] * self.omega  # [N, S, J + 1]
        a = self.amplitude
        feats = torch.cat((torch.cos(phase) * a, torch.sin(phase[..., 1:]) * a[1:]), dim=-1)
        pose = feats.flatten(1) / math.sqrt(p.shape[1])  # [N, S (2J + 1)], unit rows
        pose = pose.to(latents.device, torch.float32)
        if self.latent_weight == 0:
            return pose
        look = F.normalize(latents.float().mean(dim=(2, 3)), dim=-1)  # avg_pool [N, C]
        return torch.cat((math.sqrt(self.latent_weight) * look,
                          math.sqrt(1 - self.latent_weight) * pose), dim=-1)
