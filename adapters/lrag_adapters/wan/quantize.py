"""Float8 linear layers for the Wan DiT (``quantize: float8``), through torchao.

torchao's ``Float8DynamicActivationFloat8WeightConfig`` with per-row scales: each weight row and
each activation row (token) gets its own scale, activations are quantised on the fly, the GEMMs
run in e4m3 on the tensor cores (``torch._scaled_mm``). Only the linear layers of the 30 blocks
are converted (self- and cross-attention projections, FFN); embeddings, time path, modulations,
norms, head and the attention itself stay as they are. Needs a CUDA device with compute capability
8.9 or newer (Ada, Hopper and later) and bf16 weights.
"""
from __future__ import annotations

import torch
from torch import nn

MIN_CAPABILITY = (8, 9)
INSTALL = "pip install 'lrag-framework[fp8]' (torchao >= 0.18)"


def check_float8(device: torch.device, dtype: torch.dtype) -> None:
    """Raise ValueError naming what is missing for float8 linear layers on ``device``."""
    if device.type != "cuda":
        raise ValueError(f"wan: quantize: float8 needs a CUDA device with compute capability "
                         f">= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} (e.g. H100, H200, L40); "
                         f"the run is on {device}: use quantize: none")
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        raise ValueError(f"wan: quantize: float8 needs compute capability >= "
                         f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}, {torch.cuda.get_device_name(device)} "
                         f"has {capability[0]}.{capability[1]}: use quantize: none")
    if dtype != torch.bfloat16:
        raise ValueError(f"wan: quantize: float8 runs the DiT in bfloat16, got {dtype}: set "
                         f"dtype: bfloat16 (or auto)")
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ValueError(f"wan: quantize: float8 needs torchao: {INSTALL}") from None


def float8_linears(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Convert the linear layers of ``model.blocks`` in place (weights already on ``device``)."""
    check_float8(device, dtype)
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, PerRow,
                                      quantize_)

    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(),
                                                       set_inductor_config=False)
    quantize_(model.blocks, config, filter_fn=lambda m, _name: isinstance(m, nn.Linear))
