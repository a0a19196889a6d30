"""Hypothesis strategies for plugin tests: descriptor sets with ties and duplicates, masks, ids,
k, streams, latent frames and embedding sequences.

Large arrays are drawn from a NumPy generator seeded by hypothesis (one integer), so examples stay
fast and reproducible while hypothesis still chooses sizes, kinds and edge values.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import strategies as st

KINDS = ("normal", "lattice", "dup", "scaled")


def vectors(rng: np.random.Generator, n: int, d: int, kind: str) -> np.ndarray:
    """[n, d] float32 without zero rows. ``lattice`` (small integers) and ``dup`` (repeated
    rows) make exact score ties common; ``scaled`` spans magnitudes 1e-3 .. 1e3."""
    if kind == "lattice":
        x = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    else:
        scale = rng.choice([0.01, 1.0, 100.0]) if kind != "scaled" else 1.0
        x = rng.standard_normal((n, d)) * scale
        if kind == "scaled":
            x *= 10.0 ** rng.integers(-3, 4, size=(n, 1))
        x = np.where(np.abs(x) < 1e-3 * scale, 1e-3 * scale, x).astype(np.float32)
    if kind == "dup" and n > 1:
        x[rng.integers(0, n, n // 2)] = x[rng.integers(0, n, n // 2)]
    x[~x.any(axis=1), 0] = 1.0
    return x


def seeds() -> st.SearchStrategy[np.random.Generator]:
    return st.integers(0, 2 ** 32 - 1).map(np.random.default_rng)


def stream_ids(max_streams: int = 4) -> st.SearchStrategy[int]:
    return st.integers(0, max_streams - 1)


def top_k(max_k: int = 9) -> st.SearchStrategy[int]:
    return st.integers(0, max_k)


@st.composite
def descriptor_sets(draw, max_frames: int = 40, max_dim: int = 12, dim: int | None = None):
    """(kind, [n, D] float32 array) with ties and duplicates in the ``lattice``/``dup`` kinds."""
    rng = draw(seeds())
    kind = draw(st.sampled_from(KINDS))
    n, d = draw(st.integers(0, max_frames)), dim or draw(st.integers(1, max_dim))
    return kind, vectors(rng, n, d, kind)


@st.composite
def masks(draw, streams: int, frames: int) -> torch.Tensor:
    """bool [streams, frames]: sparse, half or fully eligible."""
    rng = draw(seeds())
    density = draw(st.sampled_from([0.1, 0.5, 1.0]))
    return torch.from_numpy(rng.random((streams, frames)) < density)


@st.composite
def chunkings(draw, n: int) -> list[int]:
    """Sorted cut points in (0, n): how a history of n frames is split into ``add`` calls."""
    if n < 2:
        return []
    return sorted(draw(st.sets(st.integers(1, n - 1), max_size=min(n - 1, 4))))


@dataclass
class RetrievalCase:
    """Histories of S streams, how each is chunked into ``add`` calls, queries, k and a mask."""

    histories: list[np.ndarray]  # per stream [n_s, D] float32, frame ids 0..n_s-1
    cuts: list[list[int]]
    queries: np.ndarray  # [S, D] float32
    k: int
    eligible: torch.Tensor  # [S, F] bool; F may be shorter or longer than a history
    kind: str

    def add_to(self, retriever, chunked: bool = True) -> None:
        for s, x in enumerate(self.histories):
            bounds = [0, *(self.cuts[s] if chunked else []), len(x)]
            for a, b in zip(bounds[:-1], bounds[1:]):
                retriever.add(s, torch.arange(a, b), torch.from_numpy(x[a:b]))


@st.composite
def retrieval_cases(draw, max_streams: int = 3, max_frames: int = 40, max_dim: int = 12,
                    max_k: int = 9) -> RetrievalCase:
    rng = draw(seeds())
    s, d = draw(st.integers(1, max_streams)), draw(st.integers(1, max_dim))
    kind = draw(st.sampled_from(KINDS))
    counts = [draw(st.integers(0, max_frames)) for _ in range(s)]
    hist = [vectors(rng, n, d, kind) for n in counts]
    if kind == "dup" and s and counts[0]:  # queries that equal a stored frame: ties at the top
        queries = np.stack([h[rng.integers(len(h))] if len(h) else vectors(rng, 1, d, kind)[0]
                            for h in hist])
    else:
        queries = vectors(rng, s, d, kind)
    frames = draw(st.integers(0, max_frames + 10))
    return RetrievalCase(hist, [draw(chunkings(n)) for n in counts], queries,
                         draw(top_k(max_k)), draw(masks(s, frames)), kind)


@st.composite
def latent_frames(draw, shape: tuple[int, int, int], max_n: int = 5) -> torch.Tensor:
    """float32 [N, C, H, W], N >= 1: normal noise, large or small scale, or smooth frames."""
    rng = draw(seeds())
    n = draw(st.integers(1, max_n))
    kind = draw(st.sampled_from(["normal", "scaled", "smooth"]))
    x = rng.standard_normal((n, *shape))
    if kind == "scaled":
        x *= 10.0 ** rng.integers(-2, 3, size=(n, 1, 1, 1))
    elif kind == "smooth":
        x = np.cumsum(np.cumsum(x, axis=-1), axis=-2) / max(shape[1] * shape[2], 1)
    return torch.from_numpy(x.astype(np.float32))


@st.composite
def signalled_frames(draw, shape: tuple[int, int, int], signal_dim: int, max_n: int = 5,
                     scale: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames [N, C, H, W] as ``latent_frames``, signals float32 [N, S] in [-scale, scale]):
    the input of a conditioned embedder."""
    x = draw(latent_frames(shape, max_n))
    rng = draw(seeds())
    signals = rng.uniform(-scale, scale, (len(x), signal_dim))
    return x, torch.from_numpy(signals.astype(np.float32))


@st.composite
def embedding_sequences(draw, min_frames: int = 2, max_frames: int = 8, max_dim: int = 6,
                        max_batch: int = 3) -> torch.Tensor:
    """float32 [B, S, D] with norms in [0.1, 10]; half are slow random walks (similar neighbours,
    so margin-type hinges are active)."""
    rng = draw(seeds())
    b, s = draw(st.integers(1, max_batch)), draw(st.integers(min_frames, max_frames))
    d = draw(st.integers(2, max_dim))
    e = rng.standard_normal((b, s, d))
    if draw(st.booleans()):
        e = np.cumsum(e * 0.1, axis=1) + rng.standard_normal(d)
    norms = np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-3)
    e = e / norms * rng.uniform(0.1, 10, size=norms.shape)
    return torch.from_numpy(e.astype(np.float32))
