"""Run-time checks of what plugins return, against the contracts in ``interfaces``.

The engine calls ``check_search_result`` on every retrieval: a retriever that returns an
ineligible frame, claims more results than it padded, or ranks worst first stops the run with one
``ComponentError`` naming the component, its plugin and the block, instead of silently feeding
wrong frames into the context. The checks are a handful of vectorised operations on the ``[S, k]``
result, after the copy to the CPU that the engine makes anyway. Before a run,
``check_embedder_signals`` refuses a conditioned embedder whose conditioning has no signals.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .interfaces import ComponentError


def _first(bad: Tensor) -> tuple[int, int]:
    """(row, column) of the first True of a 2-D bool tensor."""
    row, col = (int(v) for v in bad.nonzero()[0])
    return row, col


def search_result_problem(result, k: int, eligible: Tensor) -> str | None:
    """What is wrong with a ``Retriever.search`` result for ``k`` and ``eligible`` [S, F] (CPU
    tensors), or None. The rules are those of ``interfaces.Retriever.search``."""
    try:
        ids, scores, counts = result
    except (TypeError, ValueError):
        return f"search returned {type(result).__name__}, not SearchResult(ids, scores, counts)"
    s = eligible.shape[0]
    for name, t, shape in (("ids", ids, (s, k)), ("scores", scores, (s, k)),
                           ("counts", counts, (s,))):
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            return f"{name} has shape {got}, expected {shape}"
    if ids.is_floating_point() or ids.dtype == torch.bool or counts.is_floating_point():
        return f"ids and counts must be integers, got {ids.dtype} and {counts.dtype}"
    if not scores.is_floating_point():
        return f"scores must be floating, got {scores.dtype}"
    bad = (counts < 0) | (counts > k)
    if bad.any():
        i = int(bad.nonzero()[0])
        return f"stream {i}: count {int(counts[i])} is outside [0, k={k}]"
    real = torch.arange(k) < counts[:, None]  # [S, k]: the first counts[s] slots hold results
    bad = ~real & ((ids != -1) | (scores != -torch.inf))
    if bad.any():
        i, j = _first(bad)
        return (f"stream {i}: slot {j} is beyond count {int(counts[i])} but holds id "
                f"{int(ids[i, j])} / score {float(scores[i, j])} (padding is id -1, score -inf)")
    f = eligible.shape[1]
    bad = real & ((ids < 0) | (ids >= f))
    if bad.any():
        i, j = _first(bad)
        return f"stream {i}: id {int(ids[i, j])} in slot {j} is not a frame id below {f}"
    bad = (real & ~eligible.gather(1, ids.long().clamp(0, max(f - 1, 0)))) if f else real
    if bad.any():
        i, j = _first(bad)
        return f"stream {i}: frame {int(ids[i, j])} is not eligible"
    bad = real & ~torch.isfinite(scores)
    if bad.any():
        i, j = _first(bad)
        return f"stream {i}: score {float(scores[i, j])} of frame {int(ids[i, j])} is not finite"
    if k > 1:
        bad = real[:, 1:] & (scores[:, 1:] > scores[:, :-1])
        if bad.any():
            i, j = _first(bad)
            return (f"stream {i}: scores are not best first (slot {j}: {float(scores[i, j])}, "
                    f"slot {j + 1}: {float(scores[i, j + 1])})")
        ranked = ids.masked_fill(~real, -1).sort(dim=1).values  # [S, k]
        bad = (ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] >= 0)
        if bad.any():
            i, j = _first(bad)
            return f"stream {i}: frame {int(ranked[i, j])} is returned twice"
    return None


def check_search_result(result, k: int, eligible: Tensor, component: object,
                        block: int) -> tuple[Tensor, Tensor, Tensor]:
    """``result`` of ``component.search(..., k, eligible)`` before block ``block`` as CPU tensors
    (ids long, scores float32, counts long); ``ComponentError`` if it breaks the contract."""
    try:
        ids, scores, counts = (t.cpu() if isinstance(t, Tensor) else t for t in result)
    except (TypeError, ValueError):
        ids = scores = counts = None
    problem = search_result_problem(
        result if ids is None else (ids, scores, counts), k, eligible.cpu())
    if problem is not None:
        from .plugins import describe_component

        raise ComponentError(
            f"{describe_component(component, 'retriever')} broke the Retriever contract "
            f"retrieving for the block at frame {block}: {problem}")
    return ids.long(), scores.float(), counts.long()


def check_embedder_signals(embedder: object, cond) -> None:
    """A conditioned embedder needs ``cond.frame_signals`` (``[B, 1, S]`` for frame 0):
    ``ComponentError`` naming it when the conditioning has none or of another form."""
    if not getattr(embedder, "conditioned", False):
        return
    signals = cond.frame_signals(torch.zeros(1, dtype=torch.long))
    problem = None
    if signals is None:
        problem = (f"its conditioning ({type(cond).__qualname__}) has no per-frame signals "
                   "(Conditioning.frame_signals): use an embedder that reads the frames only, "
                   "e.g. avg_pool")
    elif not (isinstance(signals, Tensor) and signals.ndim == 3 and signals.shape[1] == 1
              and signals.is_floating_point()):
        got = list(signals.shape) if isinstance(signals, Tensor) else type(signals).__name__
        problem = f"the conditioning's frame_signals of one frame must be [B, 1, S] float, got {got}"
    if problem is not None:
        from .plugins import describe_component

        raise ComponentError(f"{describe_component(embedder, 'embedder')} is conditioned, "
                             f"but {problem}")
