"""Devices and dtypes: the one place that turns config strings into torch objects."""
from __future__ import annotations

import re

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_error(name: str) -> str | None:
    """Why ``name`` is not a usable device here, or None."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        return f"device must be auto, cpu or cuda[:N], got {name!r}"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"device {name}: CUDA is not available on this machine"
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            return (f"device {name}: this machine has {torch.cuda.device_count()} CUDA "
                    f"device(s)")
    return None


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU. Raises ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    error = device_error(name)
    if error:
        raise ValueError(error)
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA, float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]
