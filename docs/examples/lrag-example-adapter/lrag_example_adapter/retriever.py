"""``example_flat``: exact cosine top-K, one growing [n, D] tensor per stream."""
from __future__ import annotations

import torch

from lrag_framework.interfaces import Retriever, SearchResult
from lrag_framework.retrieval import (check_frame_ids, check_search, check_stream, check_vectors,
                                      empty_result, normalise, top_k_newest_first)


class FlatRetriever(Retriever):
    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.dim: int | None = None
        self.rows: dict[int, torch.Tensor] = {}  # stream -> [n, D] unit rows (float32, CPU)
        self.ids: dict[int, torch.Tensor] = {}  # stream -> [n] frame ids, increasing

    def add(self, stream, frame_ids, descriptors) -> None:
        check_stream(stream)
        check_vectors(descriptors, self.dim, "descriptors")
        last = int(self.ids[stream][-1]) if stream in self.ids else -1
        ids = check_frame_ids(frame_ids, descriptors.shape[0], last)
        if len(ids) == 0:
            return
        self.dim = descriptors.shape[1]
        x = normalise(descriptors.detach().to("cpu", torch.float32))
        self.rows[stream] = torch.cat([self.rows.get(stream, x[:0]), x])
        self.ids[stream] = torch.cat([self.ids.get(stream, ids[:0]), ids])

    def search(self, queries, k, eligible) -> SearchResult:
        check_search(queries, k, eligible, self.dim)
        out = empty_result(queries.shape[0], k, "cpu")
        for s in range(queries.shape[0]):
            if s not in self.rows or k == 0:
                continue
            ids = self.ids[s]
            ok = ids < eligible.shape[1]
            mask = torch.zeros(len(ids), dtype=torch.bool)
            mask[ok] = eligible[s].cpu()[ids[ok]]
            q = normalise(queries[s:s + 1].detach().to("cpu", torch.float32))
            scores = self.rows[s] @ q[0]  # [n]; slot order = frame order, so the newest-first
            top, best = top_k_newest_first(scores[None], mask[None], k)  # tie-break holds
            n = int((top >= 0).sum())
            out.ids[s, :n], out.scores[s, :n] = ids[top[0, :n]], best[0, :n]
            out.counts[s] = n
        return SearchResult(*(t.to(queries.device) for t in out))

    def state_dict(self) -> dict:
        state = {"dim": torch.tensor(-1 if self.dim is None else self.dim)}
        for s in self.rows:
            state[f"rows.{s}"], state[f"ids.{s}"] = self.rows[s], self.ids[s]
        return state

    def load_state_dict(self, state: dict) -> None:
        if "dim" not in state:
            raise ValueError(f"not an example_flat state: keys {sorted(state)[:6]}")
        self.reset()
        self.dim = None if int(state["dim"]) < 0 else int(state["dim"])
        for key in state:
            if key.startswith("rows."):
                s = int(key.split(".")[1])
                self.rows[s], self.ids[s] = state[key].float(), state[f"ids.{s}"].long()
