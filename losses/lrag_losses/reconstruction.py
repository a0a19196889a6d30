"""Reconstruction loss of an autoencoder embedder: MSE between its output and the input latents."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lrag_framework.interfaces import Loss, LossInputs


class ReconstructionLoss(Loss):
    def __call__(self, inputs: LossInputs) -> Tensor:
        x, y = inputs.latents, inputs.reconstruction
        if x is None or y is None:
            raise ValueError("reconstruction needs latents and reconstruction (an autoencoder "
                             "embedder); got "
                             f"latents={'set' if x is not None else None}, "
                             f"reconstruction={'set' if y is not None else None}")
        if x.shape != y.shape:
            raise ValueError(f"reconstruction shape {list(y.shape)} != latents shape "
                             f"{list(x.shape)}")
        return F.mse_loss(y.float(), x.float())
