"""Prompt conditioning of the Wan backbones: raw items (texts, embeddings, files, schedules)
checked and normalised, and the per-batch ``WanConditioning`` with its segments."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lrag_framework.interfaces import Conditioning


@dataclass
class WanConditioning(Conditioning):
    """Prompt segments of a batch of streams; text K/V computed once per distinct prompt."""

    text_kv: Tensor  # [L, 2, P, Lt, Hh, Dh]: cross-attention K (normed) and V per prompt
    starts: Tensor  # [B, S] long: first frame of each segment, ascending (padding: a huge id)
    prompts: Tensor  # [B, S] long: prompt index of each segment
    switch_frames: tuple[int, ...] = ()
    _cached: tuple[tuple, Tensor] | None = field(default=None, repr=False)

    def prompt_of(self, frames: Tensor) -> Tensor:
        """Frame ids [B, F] -> index of the prompt active at each frame [B, F]."""
        segment = (self.starts[:, None, :] <= frames[:, :, None]).sum(-1) - 1
        return self.prompts.gather(1, segment)

    def segments(self, frames: Tensor) -> Tensor:
        """Frame ids [F] -> schedule entry in effect at each frame, per stream [B, F]."""
        return (self.starts[:, None, :] <= frames[None, :, None]).sum(-1) - 1

    def aligned(self, block_starts: list[int]) -> WanConditioning:
        """Each segment start moved to the first block start at or after it (never later than
        the last block: a start beyond it never takes effect)."""
        blocks = torch.tensor(block_starts)
        idx = torch.searchsorted(blocks, self.starts)
        far = np.iinfo(np.int64).max
        starts = torch.where(idx < len(blocks), blocks[idx.clamp(max=len(blocks) - 1)], far)
        switches = tuple(sorted({int(v) for v in starts.flatten() if 0 < v < far}))
        return WanConditioning(self.text_kv, starts, self.prompts, switches)

    def cross(self, frames: Tensor) -> Tensor:
        """Text K/V for frames [B, F]: [L, 2, B, Lt, Hh, Dh] when each stream's frames share a
        prompt, else [L, 2, B, F, Lt, Hh, Dh]; the last answer is kept for the next block."""
        idx = self.prompt_of(frames)
        key = (tuple(idx.shape), tuple(idx.flatten().tolist()))
        if self._cached is None or self._cached[0] != key:
            device = self.text_kv.device
            if bool((idx == idx[:, :1]).all()):
                kv = self.text_kv.index_select(2, idx[:, 0].to(device))
            else:
                kv = self.text_kv.index_select(2, idx.flatten().to(device))
                kv = kv.unflatten(2, tuple(idx.shape))
            self._cached = (key, kv)
        return self._cached[1]


def is_segments(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and len(item) > 0 and isinstance(item[0], dict)


def check_segments(segments: list[dict], num_frames: int) -> list[dict]:
    starts = []
    for seg in segments:
        if not isinstance(seg, dict) or "start" not in seg or len(seg) != 2 \
                or not ({"prompt", "embedding", "item"} & set(seg)):
            raise ValueError(f"wan: a prompt segment is {{start, prompt}} or {{start, "
                             f"embedding}}, got {seg!r:.200}")
        starts.append(seg["start"])
    if starts[0] != 0 or any(not isinstance(s, int) or s < 0 for s in starts) \
            or starts != sorted(set(starts)) or starts[-1] >= max(num_frames, 1):
        raise ValueError(f"wan: segment starts must be increasing frame ids from 0 and below "
                         f"num_frames {num_frames}, got {starts}")
    return segments


def as_segment(seg: dict) -> dict:
    """A checked segment as {start, prompt} or {start, embedding}; a plain item is a prompt
    text unless it names a .safetensors file."""
    if "item" not in seg:
        return seg
    item = seg["item"]
    if isinstance(item, str) and not item.endswith(".safetensors"):
        if not item.strip():
            raise ValueError("wan: empty prompt text")
        return {"start": seg["start"], "prompt": item}
    return {"start": seg["start"], "embedding": item}


def identity_of(item: Any) -> tuple:
    """Dedup key of an embedding: its path, or the object (the runner repeats objects)."""
    if isinstance(item, (str, Path)):
        return ("path", str(Path(item).resolve()))
    return ("object", id(item))


def read_embedding(path: Path) -> Tensor:
    from safetensors.torch import load_file

    if path.suffix != ".safetensors" or not path.is_file():
        raise ValueError(f"wan: prompt embedding {path}: expected an existing .safetensors file "
                         f"holding one tensor [Lt, text_dim] (or 'prompt_embeds')")
    tensors = load_file(str(path))
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    if "prompt_embeds" in tensors:
        return tensors["prompt_embeds"]
    raise ValueError(f"wan: prompt embedding {path} holds {sorted(tensors)}; expected one tensor "
                     f"or 'prompt_embeds'")
