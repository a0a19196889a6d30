"""The tiny backbone's noise schedule and sampler step, shared by inference and training."""
from __future__ import annotations

import torch
from torch import Tensor

from .params import TinyParams


def sigmas(p: TinyParams) -> Tensor:
    """Noise levels of the denoising steps after the shift ``s*sigma / (1 + (s-1)*sigma)`` [S]."""
    s = torch.tensor(p.steps, dtype=torch.float64)
    return (p.shift * s / (1 + (p.shift - 1) * s)).float()


def sampler_step(x: Tensor, velocity: Tensor, sigma: Tensor, sigma_next: Tensor, noise: Tensor,
                 sampler: str) -> Tensor:
    """One step from noise level ``sigma`` to ``sigma_next`` given the velocity ``noise - x0``:
    ``euler`` integrates it, ``renoise`` estimates x0 and noises it again with ``noise``."""
    if sampler == "euler":
        return x + (sigma_next - sigma) * velocity
    x0 = x - sigma * velocity
    return (1 - sigma_next) * x0 + sigma_next * noise
