"""The ``avg_pool`` embedder: the spatial mean of a latent frame, L2-normalised (D = C).

This is the public LongLive-RAG default descriptor (``avg_pool`` in its
``pipeline/causal_inference.py``), normalised so cosine and inner product agree.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lrag_framework.interfaces import Embedder


class AvgPoolEmbedder(Embedder):
    """[N, C, H, W] -> [N, C] float32 unit vectors (a zero frame gives a zero vector)."""

    def embed(self, latents: Tensor) -> Tensor:
        if latents.ndim != 4:
            raise ValueError(f"avg_pool expects frames [N, C, H, W], got {list(latents.shape)}")
        return F.normalize(latents.float().mean(dim=(2, 3)), dim=-1)  # [N, C]
