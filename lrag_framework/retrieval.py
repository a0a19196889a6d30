"""Helpers for writing a retriever: the input checks and result helpers of the Retriever contract.

The rules themselves are stated once, in ``lrag_framework.interfaces.Retriever``; these functions
implement the parts every retriever needs, so a plugin follows them by calling them (the built-in
``exact`` and ``usearch`` do):

- ``check_stream``, ``check_vectors``, ``check_frame_ids``, ``check_search``: reject bad input of
  ``add`` / ``search`` with a ``ValueError`` naming the value;
- ``normalise``: L2 rows for cosine scoring, safe for tiny and huge rows;
- ``top_k_newest_first``: top-K over a dense score matrix with the newest-first tie-break;
- ``empty_result``: the padded result of a search that finds nothing;
- ``pack_config`` / ``unpack_config``: a JSON ``config`` entry for a flat tensor state dict, so
  ``safetensors.torch.save_file(retriever.state_dict(), path)`` works as is.
"""
from __future__ import annotations

import json

import torch
from torch import Tensor

from .interfaces import SearchResult

STATE_VERSION = 1


def check_stream(stream: int) -> int:
    if isinstance(stream, bool) or not isinstance(stream, int) or stream < 0:
        raise ValueError(f"stream must be a non-negative int, got {stream!r}")
    return stream


def check_vectors(x: Tensor, dim: int | None, what: str) -> None:
    """``x`` [n, D]: floating, D == ``dim`` (when known), finite and non-zero rows in float32."""
    if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{what} must be a floating tensor [n, D], got {got}")
    if x.shape[1] == 0:
        raise ValueError(f"{what} have dimension 0")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what} have dimension {x.shape[1]}, the index has {dim}")
    if x.shape[0] == 0:
        return
    x = x.detach().float()  # retrievers score in float32: a float64 1e39 is inf there
    bad = ~torch.isfinite(x).all(dim=1)
    zero = (x == 0).all(dim=1)
    if not bool((bad | zero).any()):  # one device sync when all is well
        return
    if bad.any():
        raise ValueError(f"{what} row {int(bad.nonzero()[0])} is not finite in float32 "
                         f"(NaN, inf or beyond 3.4e38)")
    raise ValueError(f"{what} row {int(zero.nonzero()[0])} is zero (no direction to rank by)")


def check_frame_ids(frame_ids: Tensor, n: int, last: int) -> Tensor:
    """Frame ids [n] as a CPU long tensor; strictly increasing and above ``last`` (the largest id
    already added to the stream, -1 if none)."""
    if not isinstance(frame_ids, Tensor) or frame_ids.dim() != 1:
        raise ValueError(f"frame_ids must be a 1-D tensor, got {frame_ids!r}")
    if frame_ids.is_floating_point() or frame_ids.dtype == torch.bool:
        raise ValueError(f"frame_ids must be integers, got {frame_ids.dtype}")
    if frame_ids.numel() != n:
        raise ValueError(f"{frame_ids.numel()} frame_ids for {n} descriptors")
    ids = frame_ids.to("cpu", torch.long)
    if n and (int(ids[0]) <= last or (n > 1 and not bool((ids[1:] > ids[:-1]).all()))):
        raise ValueError(f"frame ids must be added in generation order (strictly increasing, "
                         f"after {last}); got {ids.tolist()[:8]}{'...' if n > 8 else ''}")
    return ids


def check_search(queries: Tensor, k: int, eligible: Tensor, dim: int | None) -> None:
    """The arguments of ``Retriever.search``; ``dim`` is the index's dimension (None: empty)."""
    check_vectors(queries, dim, "queries")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    if not isinstance(eligible, Tensor) or eligible.dtype != torch.bool or eligible.dim() != 2:
        got = (f"{tuple(eligible.shape)} {eligible.dtype}" if isinstance(eligible, Tensor)
               else type(eligible).__name__)
        raise ValueError(f"eligible must be a bool tensor [S, F], got {got}")
    if eligible.shape[0] != queries.shape[0]:
        raise ValueError(f"eligible has {eligible.shape[0]} rows for {queries.shape[0]} queries")


def normalise(x: Tensor) -> Tensor:
    """Rows of ``x`` [n, D] scaled to unit L2 norm (pre-scaled by max |x| so tiny rows survive)."""
    x = x / x.abs().amax(dim=1, keepdim=True)
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True)


def top_k_newest_first(scores: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Best ``k`` of ``scores`` [S, F] where ``mask``; equal scores: larger frame id first.

    Returns ids [S, m] (-1 padded) and scores [S, m] (-inf padded), m <= k. ``topk`` alone has
    no defined order among ties, so every eligible frame scoring at least the k-th best value is
    collected newest first and then stably sorted by score (one device sync, for the number of
    candidates: k unless scores tie at the k-th).
    """
    scores = scores.masked_fill(~mask, -torch.inf)
    kth = scores.topk(min(k, scores.shape[1]), dim=1).values[:, -1:]  # [S, 1]
    cand = mask & (scores >= kth)  # [S, F]: the top k plus anything tied with the k-th
    m = int(cand.sum(dim=1).max())
    frame = torch.arange(scores.shape[1], device=scores.device)
    ids = torch.where(cand, frame, -1).topk(m, dim=1).values  # [S, m] ids descending
    top = scores.gather(1, ids.clamp(min=0)).masked_fill(ids < 0, -torch.inf)
    order = top.sort(dim=1, descending=True, stable=True).indices
    return ids.gather(1, order)[:, :k], top.gather(1, order)[:, :k]


def empty_result(s: int, k: int, device: torch.device | str) -> SearchResult:
    """``s`` streams with nothing found: ids -1, scores -inf, counts 0."""
    return SearchResult(torch.full((s, k), -1, dtype=torch.long, device=device),
                        torch.full((s, k), -torch.inf, device=device),
                        torch.zeros(s, dtype=torch.long, device=device))


def pack_config(**config) -> Tensor:
    """``config`` (JSON-able) plus ``state_version`` as UTF-8 JSON in a uint8 tensor."""
    text = json.dumps({"state_version": STATE_VERSION, **config}, sort_keys=True)
    return torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8).clone()


def unpack_config(state: dict, expect: dict) -> dict:
    """Read ``state["config"]`` and check the entries named in ``expect`` match."""
    if "config" not in state:
        raise ValueError(f"not a retriever state dict: keys {sorted(state)[:6]}")
    config = json.loads(bytes(state["config"].cpu().numpy()).decode())
    if config.get("state_version") != STATE_VERSION:
        raise ValueError(f"state version {config.get('state_version')} is not {STATE_VERSION}")
    for key, value in expect.items():
        if config.get(key) != value:
            raise ValueError(f"state has {key}={config.get(key)!r}, this retriever {value!r}")
    return config
