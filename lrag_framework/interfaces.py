"""Abstract contracts between the engine and its plugins.

Shapes use B = streams in a batch, F = frames, N = tokens per frame, L = layers, Hh = heads,
Dh = head dim, C/H/W = latent channels/height/width, D = descriptor dim.

K/V layout (fixed, so memory tiers can change without touching a backbone): the K/V of F frames
is one tensor ``[L, 2, B, F, N, Hh, Dh]`` (index 0 = K, stored *without* RoPE; 1 = V). The
backbone applies positions in ``prepare`` and rearranges as it likes, once per block.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

ROLE_SINK, ROLE_RETRIEVED, ROLE_LOCAL = 0, 1, 2


class ComponentError(ValueError):
    """A component cannot be built or run as configured (e.g. a checkpoint file is missing or
    does not match): the user's to fix, so ``lrag`` prints the message without a traceback."""


@dataclass(frozen=True)
class BackboneSpec:
    """What the engine must know about a backbone to plan and store its context."""

    latent_shape: tuple[int, int, int]  # (C, H, W) of one latent frame
    tokens_per_frame: int
    frames_per_block: int
    num_layers: int
    num_heads: int
    head_dim: int
    kv_dtype: torch.dtype
    window: int  # default attention window in frames, incl. sink and the current block
    sink: int  # default number of sink frames
    pixel_size: tuple[int, int] | None = None  # (h, w) of decoded frames; None: latent (H, W)
    frames_per_latent: int = 1  # video frames per latent frame (the first latent: one frame)


@dataclass
class Context:
    """The planned attention context of one block, built once by the engine, used by every pass.

    ``kv`` is ``[L, 2, B, F, N, Hh, Dh]`` (K un-roped). Per stream, frames that are padding
    (streams that got fewer retrieved frames) have ``valid`` False and ``frame_ids`` -1.
    """

    kv: Tensor  # [L, 2, B, F, N, Hh, Dh]
    frame_ids: Tensor  # [B, F] long, -1 = padding
    positions: Tensor  # [B, F] long temporal positions
    roles: Tensor  # [B, F] long: ROLE_SINK / ROLE_RETRIEVED / ROLE_LOCAL
    valid: Tensor  # [B, F] bool
    block_start: int  # frame id of the block's first frame
    block_positions: Tensor  # [B, Fb] temporal positions of the block's frames
    cond_frame: int | None = None  # frame whose conditioning applies (None: each frame's own);
    # set when the engine recaches the window after a conditioning switch (a new prompt)


class Conditioning(ABC):
    """Time-indexed conditioning of a batch of streams (prompt segments, per-frame actions).

    The backbone creates it (``Backbone.encode_conditioning``) and slices it per block itself;
    the engine only reads ``switch_frames``: frame ids where it changes in a way that requires the
    window to be recached (a new prompt). Per-frame signals such as actions have none.
    """

    switch_frames: tuple[int, ...] = ()

    def aligned(self, block_starts: list[int]) -> "Conditioning":
        """This conditioning with every switch moved to the first block start at or after it
        (a switch takes effect at a block boundary). Default: no switches, itself."""
        return self

    def segments(self, frames: Tensor) -> Tensor:
        """Segment index (0, 1, ... per switch) of frame ids [F] in each stream -> [B, F]."""
        return torch.zeros((1, len(frames)), dtype=torch.long)


@dataclass
class Reference:
    """Ground truth that a conditioning implies (e.g. a simulator's frames along a camera path):
    a source of prefix frames and of the evaluation plots and metrics of a run."""

    pixels: Tensor  # [T, 3, h, w] in [-1, 1]
    latents: Tensor  # [T, C, H, W]
    same_place: Tensor | None = None  # [T, T] bool: frames i and j show the same place


class Backbone(ABC):
    """An autoregressive, block-causal video generator attending to an engine-owned context."""

    spec: BackboneSpec

    @abstractmethod
    def encode_conditioning(self, items: list[Any], num_frames: int) -> Conditioning:
        """Turn one raw conditioning per stream (from the config) into a batched Conditioning."""

    @abstractmethod
    def timesteps(self) -> Tensor:
        """Denoising timesteps of one block, descending (e.g. warped [1000, 750, 500, 250])."""

    @abstractmethod
    def sampler_step(self, x: Tensor, prediction: Tensor, t: Tensor, t_next: Tensor,
                     noise: Tensor) -> Tensor:
        """Move ``x`` at ``t`` to ``t_next`` (0 = clean) given ``denoise``'s prediction.

        ``noise`` (shaped like ``x``) comes from the engine's generator; a deterministic sampler
        ignores it.
        """

    @abstractmethod
    def prepare(self, context: Context) -> Any:
        """Once per block: apply positions (RoPE) to the planned K, lay the context out."""

    @abstractmethod
    def denoise(self, x: Tensor, t: Tensor, cond: Conditioning, prepared: Any) -> Tensor:
        """One pass over a noisy block ``x`` [B, Fb, C, H, W] at timestep ``t`` [B]."""

    @abstractmethod
    def recache(self, clean: Tensor, cond: Conditioning, prepared: Any) -> Tensor:
        """K/V ``[L, 2, B, F, N, Hh, Dh]`` of clean frames [B, F, C, H, W] (t = 0) in context."""

    def reference(self, item: Any, num_frames: int) -> Reference | None:
        """Ground truth implied by one raw conditioning item, if the backbone knows it."""
        return None

    def encode(self, pixels: Tensor) -> Tensor:
        """Pixels [B, F, 3, h, w] in [-1, 1] -> latents [B, F, C, H, W] (default: identity)."""
        return pixels

    def decode(self, latents: Tensor) -> Tensor:
        """Latents [B, F, C, H, W] -> pixels [B, F, 3, h, w] in [-1, 1] (default: identity)."""
        return latents

    def stream_decoder(self) -> Callable[[Tensor], Tensor]:
        """A decoder for the consecutive blocks of one batch of streams: latents
        [B, F, C, H, W] -> pixels [B, f, 3, h, w]; a causal decoder (e.g. a video VAE) keeps its
        state from call to call (default: ``decode`` block by block)."""
        return self.decode

    def memory_estimate(self, streams: int, num_frames: int) -> int:
        """Bytes of compute-device memory the backbone needs for a run of ``streams`` x
        ``num_frames`` latent frames: weights, a block's activations and context buffers, its
        decoder. The history K/V pool and the output latents are counted by the engine
        (``generation.budget.estimate``), not here. Default 0: unknown."""
        return 0

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Backbone":
        """Move weights; backbones holding nn.Modules override this."""
        return self


class Embedder(ABC):
    """Clean latent frames -> retrieval descriptors."""

    @abstractmethod
    def embed(self, latents: Tensor) -> Tensor:
        """[N, C, H, W] -> [N, D] descriptors (float)."""

    def to(self, device: torch.device | str) -> "Embedder":
        return self


class SearchResult(NamedTuple):
    ids: Tensor  # [S, k] long, -1 padded
    scores: Tensor  # [S, k] float, -inf padded, sorted descending
    counts: Tensor  # [S] long: number of real results per stream


class Retriever(ABC):
    """Top-K search over the descriptors of each stream's frames; one instance per batch.

    Frames of a stream are numbered 0, 1, 2, ... in generation order; ``eligible[s, f]`` says
    whether frame ``f`` of stream ``s`` may be returned (computed by the engine). A zero or
    non-finite descriptor is an error.
    """

    @abstractmethod
    def add(self, stream: int, frame_ids: Tensor, descriptors: Tensor) -> None:
        """Index ``descriptors`` [n, D] of ``stream`` under ``frame_ids`` [n]."""

    @abstractmethod
    def search(self, queries: Tensor, k: int, eligible: Tensor) -> SearchResult:
        """Best ``k`` eligible frames per stream for ``queries`` [S, D]; ``eligible`` [S, F]."""

    @abstractmethod
    def reset(self) -> None:
        """Forget every stream."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to restore the index."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict``."""


@dataclass
class LossInputs:
    embeddings: Tensor  # [B, S, D]
    latents: Tensor | None = None  # [B, S, C, H, W]
    reconstruction: Tensor | None = None  # [B, S, C, H, W]


class Loss(ABC):
    """An embedder training objective; the trainer multiplies it by its configured weight."""

    weight: float = 1.0

    @abstractmethod
    def __call__(self, inputs: LossInputs) -> Tensor:
        """Unweighted scalar loss."""


INTERFACES = {"backbone": Backbone, "retriever": Retriever, "embedder": Embedder, "loss": Loss}
