"""Abstract contracts between the engine and its plugins.

Shapes use B = streams in a batch, F = frames, N = tokens per frame, L = layers, Hh = heads,
Dh = head dim, C/H/W = latent channels/height/width, D = descriptor dim.

K/V layout (fixed, so memory tiers can change without touching a backbone): the K/V of F frames
is one tensor ``[L, 2, B, F, N, Hh, Dh]`` (index 0 = K, stored *without* RoPE; 1 = V). The
backbone applies positions in ``prepare`` and rearranges as it likes, once per block.

These docstrings are the plugin contracts, stated once. ``lrag_framework.retrieval`` has the
helpers a retriever needs to follow its rules, ``lrag_framework.contracts`` the checks the engine
applies at run time, and ``lrag_framework.testing`` the checks a plugin's own tests call.
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
    max_positions: int | None = None  # temporal positions must stay below it (None: no bound)


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
        """Segment index (0, 1, ... per switch) of frame ids [F]: ``[B, F]`` per stream, or
        ``[1, F]`` when every stream switches at the same frames (the engine broadcasts it; the
        default, no switches, is all zeros ``[1, F]``)."""
        return torch.zeros((1, len(frames)), dtype=torch.long)

    def frame_signals(self, frames: Tensor) -> Tensor | None:
        """What the conditioning says about each frame id of [F], as numbers a retrieval key
        can use: ``[B, F, S]`` float32 on CPU (for a camera path, the camera position its
        actions integrate to), the same for a frame whatever else is asked with it. None (the
        default): it says nothing per frame (a text prompt). Read by conditioned embedders."""
        return None


@dataclass
class Reference:
    """Ground truth that a conditioning implies (e.g. a simulator's frames along a camera path):
    a source of prefix frames and of the evaluation plots and metrics of a run."""

    pixels: Tensor  # [T, 3, h, w] in [-1, 1]
    latents: Tensor  # [T, C, H, W]
    same_place: Tensor | None = None  # [T, T] bool: frames i and j show the same place


class Backbone(ABC):
    """An autoregressive, block-causal video generator attending to an engine-owned context.

    Call order of one run (``Engine.generate``), for a batch of ``B`` streams in lockstep:

    1. ``encode_conditioning(items, num_frames)`` once per batch (``items``: one raw config
       conditioning per stream); then the engine reads ``switch_frames`` of
       ``cond.aligned(block_starts)`` and calls ``cond.segments(arange(num_frames))`` once.
    2. Per block ``[s, s + Fb)`` (the last block may be shorter; prefix frames come in blocks of
       at most ``Fb`` too):
       a. ``prepare(context)`` once; ``context.frame_ids`` are the sink, retrieved and local
          frames, ``context.kv`` their stored K/V, ``context.positions`` their temporal positions
          (cache slots, see ``generation/plan.py``), ``context.valid`` False on padding;
       b. for each ``t`` of ``timesteps()`` (``T`` steps): ``denoise(x, t.expand(B), cond,
          prepared)`` with ``t`` as ``[B]``, then ``sampler_step(x, prediction, t, t_next,
          noise)`` with ``t`` and ``t_next`` 0-d tensors; after the last step ``t_next`` is 0,
          so ``sampler_step`` runs ``T`` times and its last call returns the clean block. Prefix
          blocks skip this step (their frames are given);
       c. ``recache(clean, cond, prepared)`` once, with the same ``prepared``: the K/V of the
          clean block at t = 0, stored once and never recomputed.
       ``prepared`` serves every pass of the block, so passes must not change it.
    3. At a conditioning switch at block ``s`` (``s`` in the aligned ``switch_frames``), before
       step 2 of that block: ``recache`` again over the sink frames ``[0, sink)`` and then over
       the cached non-sink frames ``[max(sink, s + Fb - (window - sink)), s)`` in chunks of at
       most ``Fb`` frames starting there; each chunk ``[c, c + n)`` gets ``prepare`` of the
       context that block ``c`` would have with nothing retrieved (its earlier cached frames at
       their slot positions, its own frames at ``block_positions`` = their slots) and
       ``context.cond_frame = s``: apply the conditioning of frame ``s`` to all of it. Chunks run
       oldest first; each one's context holds the K/V already recomputed for earlier chunks,
       and its result replaces the stored K/V of its frames.

    Before timing a run, ``lrag run`` warms up: a discarded generation of one stream with
    ``encode_conditioning(items[:1], num_frames)`` (the first conditioning only) over
    ``min(num_frames, window + Fb)`` frames, retrieval off. A backbone must give the same
    results whether or not it warmed up (no state kept between ``generate`` calls).
    Streams: one per conditioning and sample (``conditionings`` x ``samples_per_conditioning``),
    in batches of at most ``generation.batch_size``: a config without ``conditionings`` has one
    (``None``), so one stream, whatever ``batch_size`` says.
    """

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
        """Move ``x`` [B, Fb, C, H, W] at ``t`` to ``t_next`` (0-d tensors; ``t_next`` = 0 after
        the last timestep: return the clean block) given ``denoise``'s prediction.

        ``noise`` (shaped like ``x``) comes from the engine's generator, drawn at every step
        whether used or not; a deterministic sampler ignores it.
        """

    @abstractmethod
    def prepare(self, context: Context) -> Any:
        """Once per block: apply positions (RoPE) to the planned K, lay the context out.

        Attention over the context depends on each frame's K/V and position only: not on its
        order in ``frame_ids`` nor on padding (``valid`` False, whatever its K/V holds)."""

    @abstractmethod
    def denoise(self, x: Tensor, t: Tensor, cond: Conditioning, prepared: Any) -> Tensor:
        """One pass over a noisy block ``x`` [B, Fb, C, H, W] at timestep ``t`` [B]; returns
        the prediction ``sampler_step`` takes, shaped like ``x``. Stream ``b`` depends only on
        ``x[b]`` and its context (batch independence, to float tolerance)."""

    @abstractmethod
    def recache(self, clean: Tensor, cond: Conditioning, prepared: Any) -> Tensor:
        """K/V ``[L, 2, B, F, N, Hh, Dh]`` (``spec`` sizes, ``spec.kv_dtype``, K un-roped) of
        clean frames [B, F, C, H, W] at t = 0 in the prepared context; deterministic."""

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
    """Clean latent frames -> retrieval descriptors.

    ``embed`` is a pure function of each frame: deterministic, and a frame's descriptor does not
    depend on the other frames of the batch (to float tolerance). Descriptors are finite for
    finite input, all of one dimension D, and non-zero for any frame that is not degenerate (a
    retriever rejects a zero descriptor; ``avg_pool`` maps a frame of zero spatial mean to one).

    A *conditioned* embedder (``conditioned = True``, plugin API 3) also reads what the
    conditioning says about each frame (``Conditioning.frame_signals``): the engine calls
    ``embed(latents, signals)`` with ``signals`` [N, S] on the CPU, row i belonging to frame i, and
    refuses to run it with a conditioning that has no signals. Its descriptor is a pure
    function of the pair (frame, signal row).
    """

    conditioned: bool = False

    @abstractmethod
    def embed(self, latents: Tensor, signals: Tensor | None = None) -> Tensor:
        """[N, C, H, W] (and, when conditioned, [N, S]) -> [N, D] descriptors (floating, on
        the latents' device)."""

    def to(self, device: torch.device | str) -> "Embedder":
        return self


class TrainableEmbedder(Embedder):
    """An embedder that ``lrag train-embedder`` can train.

    - ``model``: an ``nn.Module``; ``model(latents [N, C, H, W])`` returns ``(reconstruction,
      embedding)``: ``reconstruction`` [N, C, H, W] or None (an embedder without a decoder;
      losses that need it then fail with their own message), ``embedding`` [N, D] with gradients.
      ``embed`` in eval mode gives the descriptors the embedding defines (e.g. L2-normalised).
    - ``save(folder)``: writes a weights folder holding ``model.safetensors`` (the
      ``model.state_dict()``; the trainer resumes from it strictly) and whatever the plugin needs
      to rebuild the model (e.g. ``config.json``).
    - Loading back: the component's params field named by ``weights_param`` (``weights``) takes
      that folder; built with it, the embedder embeds exactly as the saved one did.
    """

    weights_param: str = "weights"
    model: Any  # torch.nn.Module (typed loosely: interfaces stays free of nn imports)

    @abstractmethod
    def save(self, folder) -> None:
        """Write the weights folder ``folder`` (see the class docstring)."""


class SearchResult(NamedTuple):
    ids: Tensor  # [S, k] long, -1 padded
    scores: Tensor  # [S, k] float, -inf padded, sorted descending
    counts: Tensor  # [S] long: number of real results per stream


class Retriever(ABC):
    """Top-K search over the descriptors of each stream's frames; one instance per batch.

    The rules (``lrag_framework.retrieval`` implements the checks and the tie-break; the engine
    checks every result with ``lrag_framework.contracts.check_search_result``):

    - **Frame ids** of a stream are added in generation order: non-negative ints, strictly
      increasing, each call's first id above every id already added (gaps allowed).
    - **Bad input is a ValueError**: a descriptor or query that is zero or not finite in float32
      (whatever the metric), of another dimension than the index, not a floating ``[n, D]``
      tensor; frame ids that are not integers, out of order or not matching the descriptors; a
      negative or non-int stream or ``k``; ``eligible`` not a bool ``[S, F]`` tensor with one
      row per query. A rejected call changes nothing.
    - **Eligibility**: only frames with ``eligible[s, f]`` True that were added may be returned;
      columns beyond ``F`` are ineligible; streams never added (or beyond the last one) find
      nothing.
    - **Results** ``SearchResult(ids, scores, counts)`` on the queries' device: ``ids`` and
      ``scores`` ``[S, k]``, ``counts`` ``[S]``; the first ``counts[s] <= k`` slots hold distinct
      eligible ids with finite scores, best first (non-increasing); the rest are padding: id -1,
      score -inf. NaN is never a score. An exact retriever returns
      ``counts[s] = min(k, eligible frames)``; an approximate one may return fewer and must
      declare the recall it reaches on non-adversarial data.
    - **Scores** are the similarity of the metric: under cosine, the cosine of the descriptor
      and the query (so in [-1, 1]) up to float rounding.
    - **Ties go to the newer frame**: among equal scores the larger frame id ranks first (a
      static shot gives identical descriptors, and the newer frame's K/V is the more recent).
      Exact retrievers return the brute-force answer under that rule, so results do not depend
      on how ``add`` calls were chunked or on a save / restore in between (beyond float
      rounding: a batched product may round two scores apart by an ulp, and then they are not
      equal); approximate retrievers keep the rule too, also for tied frames their search did
      not visit (``usearch`` falls back to exhaustive search when the k-th score is tied).
    - **State**: ``state_dict()`` is a flat dict of tensors (``safetensors`` can store it);
      ``load_state_dict`` on a fresh instance of the same params restores an index that answers
      every search exactly as the saved one, and keeps accepting ``add``; a state of other
      params is a ValueError.
    """

    @abstractmethod
    def add(self, stream: int, frame_ids: Tensor, descriptors: Tensor) -> None:
        """Index ``descriptors`` [n, D] of ``stream`` under ``frame_ids`` [n]."""

    @abstractmethod
    def search(self, queries: Tensor, k: int, eligible: Tensor) -> SearchResult:
        """Best ``k`` eligible frames per stream for ``queries`` [S, D]; ``eligible`` [S, F]."""

    @abstractmethod
    def reset(self) -> None:
        """Forget every stream (the engine calls it before each batch)."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to restore the index, as a flat dict of tensors."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict``."""


@dataclass
class LossInputs:
    embeddings: Tensor  # [B, S, D]
    latents: Tensor | None = None  # [B, S, C, H, W]
    reconstruction: Tensor | None = None  # [B, S, C, H, W]


class Loss(ABC):
    """An embedder training objective: a finite 0-d tensor, differentiable in the inputs.

    The weight of a loss in the total is the framework's field ``losses[i].weight`` of the
    training config, not the plugin's (API 2: a ``weight`` attribute is not read). A loss needing
    ``latents`` / ``reconstruction`` raises a ValueError naming what is missing.
    """

    @abstractmethod
    def __call__(self, inputs: LossInputs) -> Tensor:
        """Unweighted scalar loss."""


INTERFACES = {"backbone": Backbone, "retriever": Retriever, "embedder": Embedder, "loss": Loss}
