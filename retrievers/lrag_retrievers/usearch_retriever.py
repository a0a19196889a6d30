"""Approximate top-K retrieval with one usearch HNSW index per stream (``usearch.index.Index``).

usearch has no filter argument, so eligibility is applied after the graph search: fetch
``overfetch * k * frames / eligible`` neighbours, drop ineligible ids and double the fetch until
``min(k, eligible)`` eligible ids are found. When the graph returns fewer ids than asked, or all
it has without enough eligible ones (a graph can be disconnected, e.g. by duplicate vectors), the
stream falls back to usearch's exhaustive ``exact=True`` search, so a result is never short.
``stats`` counts searches, re-fetches, exact fallbacks and tie fallbacks.

Scores are ``1 - distance`` (the cosine or inner product computed in the index's dtype). Ties go
to the newer frame as in ``exact`` (the Retriever contract), also among frames the graph search
did not return: when the k-th result's score is shared by another fetched frame the stream is
answered by the exhaustive search (``stats["tie_fallbacks"]``), and when it is the worst score
fetched the fetch is doubled, so duplicate descriptors (a static shot) rank newest first however
the graph was built and however ``add`` calls were chunked. Under ``cos`` vectors are
L2-normalised before they enter the index (f16 cannot hold large raw values).

``state_dict`` carries each index as its usearch serialisation (bytes in a uint8 tensor);
``load_state_dict`` fully loads a copy (never a view: adding to a viewed index crashes usearch).
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch
from torch import Tensor
from usearch.index import Index

from lrag_framework.interfaces import Retriever, SearchResult
from lrag_framework.retrieval import (check_frame_ids, check_search, check_stream, check_vectors,
                                      normalise, pack_config, unpack_config)

from .usearch_index import UsearchParams

F16_MAX = 65504.0


class UsearchRetriever(Retriever):
    """HNSW top-K per stream with eligibility by over-fetching (see the module docstring)."""

    def __init__(self, params: UsearchParams | None = None):
        self.params = params or UsearchParams()
        self.stats: Counter = Counter()
        self.reset()

    def reset(self) -> None:
        self.dim: int | None = None
        self._indexes: list[Index | None] = []
        self._present: list[np.ndarray] = []  # per stream: bool over frame ids, grown by doubling
        self._last: list[int] = []

    def __len__(self) -> int:
        return sum(len(index) for index in self._indexes if index is not None)

    def _new_index(self, dim: int) -> Index:
        p = self.params
        return Index(ndim=dim, metric=p.metric, dtype=p.dtype, connectivity=p.connectivity,
                     expansion_add=p.expansion_add, expansion_search=p.expansion_search)

    def _vectors(self, x: Tensor, what: str) -> np.ndarray:
        """Validated float32 [n, D] NumPy copy, unit rows under cos."""
        x = x.detach().to("cpu", torch.float32)
        if self.params.metric == "cos":
            x = normalise(x)
        elif self.params.dtype == "f16" and x.numel() and float(x.abs().max()) > F16_MAX:
            raise ValueError(f"{what} hold |x| = {float(x.abs().max()):.3g}, beyond the f16 range "
                             f"({F16_MAX}) of this index: use dtype f32 or scale descriptors")
        return np.ascontiguousarray(x.numpy())

    def add(self, stream: int, frame_ids: Tensor, descriptors: Tensor) -> None:
        check_stream(stream)
        check_vectors(descriptors, self.dim, "descriptors")
        last = self._last[stream] if stream < len(self._last) else -1
        ids = check_frame_ids(frame_ids, descriptors.shape[0], last)
        if ids.numel() == 0:
            return
        x = self._vectors(descriptors, "descriptors")  # [n, D]
        self.dim = x.shape[1]
        while len(self._indexes) <= stream:
            self._indexes.append(None)
            self._present.append(np.zeros(0, dtype=bool))
            self._last.append(-1)
        if self._indexes[stream] is None:
            self._indexes[stream] = self._new_index(self.dim)
        self._indexes[stream].add(ids.numpy().astype(np.uint64), x, threads=self.params.threads)
        present, end = self._present[stream], int(ids[-1]) + 1
        if end > len(present):
            grown = np.zeros(max(end, 2 * len(present)), dtype=bool)
            grown[:len(present)] = present
            self._present[stream] = present = grown
        present[ids.numpy()] = True
        self._last[stream] = end - 1

    def search(self, queries: Tensor, k: int, eligible: Tensor) -> SearchResult:
        check_search(queries, k, eligible, self.dim)
        s = queries.shape[0]
        ids = np.full((s, k), -1, dtype=np.int64)
        scores = np.full((s, k), -np.inf, dtype=np.float32)
        if k and self.dim is not None:
            q = self._vectors(queries, "queries")  # [S, D]
            allowed_cols = eligible.cpu().numpy()  # [S, F]
            for i in range(min(s, len(self._indexes))):
                if self._indexes[i] is None:
                    continue
                present = self._present[i]
                f = min(allowed_cols.shape[1], len(present))
                allowed = np.zeros(len(present), dtype=bool)  # [frames] eligible and added
                allowed[:f] = allowed_cols[i, :f] & present[:f]
                keys, sims = self._search_stream(self._indexes[i], q[i], k, allowed)
                ids[i, :len(keys)], scores[i, :len(keys)] = keys, sims
        out = queries.device
        ids_t = torch.from_numpy(ids).to(out)
        return SearchResult(ids_t, torch.from_numpy(scores).to(out), (ids_t >= 0).sum(dim=1))

    def _search_stream(self, index: Index, q: np.ndarray, k: int,
                       allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` keys among ``allowed`` frame ids, with similarity, best first."""
        n_allowed, n = int(allowed.sum()), len(index)
        if n_allowed == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        need = min(k, n_allowed)
        count = min(n, max(k, math.ceil(self.params.overfetch * k * n / n_allowed)))
        self.stats["searches"] += 1
        while True:
            found = index.search(q, count)
            keys = found.keys.astype(np.int64)
            ok = allowed[keys]
            complete = len(keys) == n  # the fetch holds every frame: nothing can be missed
            if ok.sum() >= need:
                keys, sims = self._ranked(keys, found.distances, ok)
                kth = sims[need - 1]
                if complete or (kth > np.float32(1.0 - found.distances.max())
                                and int((sims == kth).sum()) == 1):
                    return keys[:k], sims[:k]
                # a tied frame the graph missed may be newer; a frame beyond the fetch may tie
                # with a k-th score that is the worst fetched (then fetch more, if there is more)
                if int((sims == kth).sum()) > 1 or len(keys) < count:
                    self.stats["tie_fallbacks"] += 1
                    break
            elif len(keys) < count or count == n:  # the graph has nothing more to give
                self.stats["exact_fallbacks"] += 1
                break
            self.stats["refetches"] += 1
            count = min(n, 2 * count)
        found = index.search(q, n, exact=True, threads=self.params.threads)
        keys = found.keys.astype(np.int64)
        keys, sims = self._ranked(keys, found.distances, allowed[keys])
        return keys[:k], sims[:k]

    @staticmethod
    def _ranked(keys: np.ndarray, distances: np.ndarray,
                ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eligible ``keys`` with similarities, by similarity, then newer frame first."""
        keys, sims = keys[ok], (1.0 - distances[ok]).astype(np.float32)
        order = np.lexsort((-keys, -sims))
        return keys[order], sims[order]

    def state_dict(self) -> dict:
        """Flat tensors: ``config`` and ``index.<stream>`` (usearch bytes as uint8)."""
        p = self.params
        state = {"config": pack_config(kind="usearch", metric=p.metric, dtype=p.dtype,
                                       dim=self.dim, streams=len(self._indexes))}
        for i, index in enumerate(self._indexes):
            if index is not None:
                state[f"index.{i}"] = torch.frombuffer(index.save(), dtype=torch.uint8).clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        p = self.params
        config = unpack_config(state, {"kind": "usearch", "metric": p.metric, "dtype": p.dtype})
        self.reset()
        for i in range(config["streams"]):
            self._indexes.append(None)
            self._present.append(np.zeros(0, dtype=bool))
            self._last.append(-1)
            if f"index.{i}" not in state:
                continue
            data = state[f"index.{i}"].cpu().numpy().tobytes()
            index = Index.restore(data, view=False)  # a full copy: safe to add to later
            if index is None or index.ndim != config["dim"]:
                raise ValueError(f"state entry index.{i} is not a usearch index of dim "
                                 f"{config['dim']}")
            index.expansion_add, index.expansion_search = p.expansion_add, p.expansion_search
            keys = np.asarray(index.keys, dtype=np.int64)
            present = np.zeros(int(keys.max()) + 1 if len(keys) else 0, dtype=bool)
            present[keys] = True
            self._indexes[i], self._present[i] = index, present
            self._last[i] = len(present) - 1
        self.dim = config["dim"]
