"""Few-step flow matching timesteps of the Wan causal family (Self-Forcing's scheduler)."""
from __future__ import annotations

import torch
from torch import Tensor


class FlowSchedule:
    """Self-Forcing's ``FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True)`` with
    ``set_timesteps(train_steps)``: sigma_i = shift s / (1 + (shift - 1) s), s = 1 - i / T
    (float32, as upstream), timestep = 1000-scaled sigma; a timestep maps to the sigma of the
    nearest table entry (``utils/scheduler.py``), t = 0 to sigma 0."""

    def __init__(self, shift: float, train_steps: int = 1000):
        self.train_steps = train_steps
        raw = torch.linspace(1.0, 0.0, train_steps + 1)[:-1]
        self.sigmas = shift * raw / (1 + (shift - 1) * raw)
        self.timesteps = self.sigmas * train_steps

    def warp(self, steps: list[float]) -> Tensor:
        """Self-Forcing ``warp_denoising_step``: ``cat(timesteps, [0])[T - steps]``."""
        table = torch.cat((self.timesteps, torch.zeros(1)))
        return table[self.train_steps - torch.tensor(steps, dtype=torch.long)]

    def sigma(self, t: Tensor) -> Tensor:
        """Timesteps (any shape) -> sigmas (float64, same shape)."""
        flat = t.detach().double().cpu().reshape(-1)
        idx = (self.timesteps.double()[None] - flat[:, None]).abs().argmin(dim=1)
        sigma = torch.where(flat > 0, self.sigmas.double()[idx], 0.0)
        return sigma.reshape(t.shape)
