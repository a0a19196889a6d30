"""``check_retriever``: the Retriever contract (``interfaces.Retriever``) as executable checks.

Every check builds fresh retrievers with ``make_retriever()`` and raises ``AssertionError``
naming the broken rule. ``exact=True`` also demands the brute-force answer (newest first among
ties); ``exact=False`` demands the declared ``recall`` on seeded, non-adversarial data.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from hypothesis import given
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..contracts import search_result_problem
from ..interfaces import Retriever
from . import strategies
from ._run import expect, run_property


def reference_search(histories: list[np.ndarray], queries: np.ndarray, k: int,
                     eligible: torch.Tensor, metric: str = "cos"
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Float64 brute force: per stream (ids best first, newer frame first among equal scores;
    the scores of all its frames)."""
    out = []
    for s, x in enumerate(histories):
        x, q = x.astype(np.float64), queries[s].astype(np.float64)
        if metric == "cos":
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            q = q / np.linalg.norm(q)
        if len(x):  # identical rows score identically (a BLAS product may round them apart)
            rows, inverse = np.unique(x, axis=0, return_inverse=True)
            scores = (rows @ q)[inverse.reshape(-1)]
        else:
            scores = np.zeros(0)
        f = min(eligible.shape[1], len(x))
        ok = np.flatnonzero(eligible[s, :f].numpy())
        out.append((ok[np.lexsort((-ok, -scores[ok]))][:k], scores))
    return out


def expect_valid(result, case: strategies.RetrievalCase, exact: bool) -> None:
    """The structural rules: shapes, padding, eligible distinct ids, finite best-first scores,
    newest first among equal returned scores; counts = min(k, eligible) when ``exact``."""
    s = len(case.histories)
    eligible = torch.zeros(s, case.eligible.shape[1], dtype=torch.bool)
    for i, x in enumerate(case.histories):  # only frames that were added are eligible
        f = min(case.eligible.shape[1], len(x))
        eligible[i, :f] = case.eligible[i, :f]
    cpu = tuple(t.cpu() if isinstance(t, torch.Tensor) else t for t in result)
    problem = search_result_problem(cpu, case.k, eligible)
    expect(problem is None, f"search result breaks the contract: {problem}")
    ids, scores, counts = cpu
    for i in range(s):
        n = int(eligible[i].sum())
        c = int(counts[i])
        if exact:
            expect(c == min(case.k, n), f"stream {i}: count {c}, an exact retriever must "
                   f"return min(k={case.k}, eligible={n})")
        if c < 2:
            continue
        same = scores[i, 1:c] == scores[i, :c - 1]
        expect(bool((ids[i, 1:c][same] < ids[i, :c - 1][same]).all()),
               f"stream {i}: equal scores not newest first: ids {ids[i, :c].tolist()}, "
               f"scores {scores[i, :c].tolist()}")


def expect_scores(result, case: strategies.RetrievalCase, metric: str, exact: bool,
                  atol: float) -> None:
    """Scores are the metric's similarities; ``exact``: ids are the brute-force answer (swaps
    only between frames whose scores tie within float rounding; exact ties are ``check_ties``'s
    and ``expect_valid``'s)."""
    ids, scores, counts = (t.cpu() for t in result)
    ref = reference_search(case.histories, case.queries, case.k, case.eligible, metric)
    for i, (ref_ids, ref_sc) in enumerate(ref):
        c = int(counts[i])
        got = ids[i, :c].numpy()
        tol = atol * max(1.0, float(np.abs(ref_sc).max(initial=1.0)))
        err = np.abs(scores[i, :c].double().numpy() - ref_sc[got])
        expect(bool((err <= tol).all()), f"stream {i}: scores {scores[i, :c].tolist()} are not "
               f"the {metric} similarities {ref_sc[got].tolist()} (atol {tol:.2g})")
        if not exact:
            continue
        want = ref_ids[:c]
        for a, b in zip(got[got != want], want[got != want]):
            expect(abs(ref_sc[a] - ref_sc[b]) <= 2 * tol,
                   f"stream {i}: returned frames {got.tolist()}, brute force {want.tolist()}")


def check_search_results(make_retriever: Callable[[], Retriever], *, exact: bool,
                         metric: str = "cos", score_atol: float = 1e-4,
                         max_examples: int | None = None) -> None:
    """Random histories with ties and duplicates, chunked into ``add`` calls as drawn: results
    valid, scores right; for ``exact`` the brute-force ids, however the history was chunked."""

    @given(case=strategies.retrieval_cases())
    def prop(case):
        r = make_retriever()
        case.add_to(r, chunked=True)
        result = r.search(torch.from_numpy(case.queries), case.k, case.eligible)
        expect_valid(result, case, exact)
        expect_scores(result, case, metric, exact, score_atol)
        if exact:
            whole = make_retriever()
            case.add_to(whole, chunked=False)
            again = whole.search(torch.from_numpy(case.queries), case.k, case.eligible)
            expect_valid(again, case, exact)
            expect_scores(again, case, metric, exact, score_atol)

    run_property(prop, max_examples)


def check_ties(make_retriever: Callable[[], Retriever]) -> None:
    """Equal descriptors rank newest first, whatever the ``add`` chunking and across a save /
    restore (the case of issue 15: ids 0, 1, 2 in three calls, restore, then id 10000)."""
    v = torch.tensor([[0.3, -1.2, 2.0, 0.7]])
    for chunked in (True, False):
        live = make_retriever()
        if chunked:
            for i in range(3):
                live.add(0, torch.tensor([i]), v)
        else:
            live.add(0, torch.arange(3), v.repeat(3, 1))
        restored = make_retriever()
        restored.load_state_dict(_round_trip(live.state_dict()))
        for r, what in ((live, "live"), (restored, "restored")):
            r.add(0, torch.tensor([10000]), v)
            every = torch.ones(1, 10001, dtype=torch.bool)
            for k, want in ((1, [10000]), (3, [10000, 2, 1])):
                got = r.search(v * 3, k, every).ids[0].tolist()
                how = "one per call" if chunked else "in one call"
                expect(got == want, f"{what} index, ids added {how}: equal descriptors must "
                       f"rank newest first: k={k} gave {got}, expected {want}")
    r = make_retriever()
    x = torch.tensor([[1.0, 0.0]]).repeat(10, 1)
    x[4] = torch.tensor([0.0, 1.0])
    r.add(0, torch.arange(6), x[:6])
    r.add(0, torch.arange(6, 10), x[6:])
    eligible = torch.ones(1, 10, dtype=torch.bool)
    eligible[0, 9] = False
    got = r.search(torch.tensor([[2.0, 0.0]]), 4, eligible).ids[0].tolist()
    expect(got == [8, 7, 6, 5], f"ties among eligible frames: got {got}, expected [8, 7, 6, 5]")


def _round_trip(state: dict) -> dict:
    expect(isinstance(state, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                           for k, t in state.items()),
           "state_dict() must be a flat dict of str -> Tensor")
    return st_load(st_save({k: t.contiguous() for k, t in state.items()}))


def _same(a, b) -> bool:
    return all(torch.equal(x.cpu(), y.cpu()) for x, y in zip(a, b))


def check_state(make_retriever: Callable[[], Retriever], *, exact: bool) -> None:
    """state_dict survives safetensors; a restored index answers exactly as the saved one and
    keeps accepting adds; ``reset`` forgets everything; an empty state round-trips."""
    rng = np.random.default_rng(3)
    hist = [strategies.vectors(rng, 300, 16, "normal"), np.zeros((0, 16), np.float32),
            strategies.vectors(rng, 120, 16, "dup")]
    case = strategies.RetrievalCase(hist, [[100, 200], [], [7]], np.zeros((3, 16), np.float32),
                                    6, torch.zeros(3, 0, dtype=torch.bool), "mixed")
    a = make_retriever()
    case.add_to(a)
    b = make_retriever()
    b.load_state_dict(_round_trip(a.state_dict()))
    q = torch.from_numpy(strategies.vectors(rng, 3, 16, "normal"))
    eligible = torch.from_numpy(rng.random((3, 300)) < 0.6)
    expect(_same(a.search(q, 6, eligible), b.search(q, 6, eligible)),
           "a restored retriever must answer exactly as the saved one")
    more = torch.from_numpy(strategies.vectors(rng, 5, 16, "normal"))
    for r in (a, b):
        r.add(0, torch.arange(300, 305), more)
        r.add(1, torch.arange(5), more)
    every = torch.ones(3, 305, dtype=torch.bool)
    ra, rb = a.search(q, 6, every), b.search(q, 6, every)
    if exact:
        expect(_same(ra, rb), "after adding to both, a restored exact retriever must answer "
               "exactly as the original")
    grown = strategies.RetrievalCase([np.concatenate([hist[0], more.numpy()]), more.numpy(),
                                      hist[2]], [[], [], []], q.numpy(), 6, every, "mixed")
    expect_valid(rb, grown, exact)
    b.reset()
    expect(int(b.search(q, 6, every).counts.sum()) == 0, "reset() must forget every stream")
    empty = make_retriever()
    empty.load_state_dict(_round_trip(make_retriever().state_dict()))
    res = empty.search(torch.ones(2, 3), 4, torch.ones(2, 5, dtype=torch.bool))
    expect(res.counts.tolist() == [0, 0] and tuple(res.ids.shape) == (2, 4),
           "an empty retriever's state must round-trip to an empty retriever")


def check_bad_input(make_retriever: Callable[[], Retriever]) -> None:
    """Every bad argument of ``add`` / ``search`` is a ValueError and changes nothing."""
    r = make_retriever()
    ok = torch.eye(3, 4)
    r.add(0, torch.arange(3), ok)
    eligible = torch.ones(1, 3, dtype=torch.bool)
    before = r.search(ok[:1], 2, eligible)
    nan, inf = float("nan"), float("inf")
    bad_adds = {
        "descriptors of another dimension": (0, torch.tensor([3]), torch.ones(1, 5)),
        "a NaN descriptor": (0, torch.tensor([3]), torch.tensor([[1.0, nan, 0, 0]])),
        "an inf descriptor in row 1": (0, torch.tensor([3, 4]),
                                       torch.tensor([[1.0, 0, 0, 0], [inf, 0, 0, 0]])),
        "a float64 descriptor beyond float32": (0, torch.tensor([3]),
                                                torch.tensor([[1e39, 0, 0, 0]],
                                                             dtype=torch.float64)),
        "a zero descriptor": (0, torch.tensor([3]), torch.zeros(1, 4)),
        "a 1-D descriptor": (0, torch.tensor([3]), torch.ones(4)),
        "integer descriptors": (0, torch.tensor([3]), torch.ones(1, 4, dtype=torch.long)),
        "an id not after the last one added": (0, torch.tensor([2]), ok[:1]),
        "ids not increasing": (0, torch.tensor([5, 4]), ok[:2]),
        "2 ids for 1 descriptor": (0, torch.tensor([3, 4]), ok[:1]),
        "float ids": (0, torch.tensor([3.0]), ok[:1]),
        "a negative stream": (-1, torch.tensor([0]), ok[:1]),
    }
    for what, args in bad_adds.items():
        _expect_value_error(lambda: r.add(*args), f"add with {what}")
    bad_searches = {
        "k = -1": (ok[:1], -1, eligible),
        "k = 2.0": (ok[:1], 2.0, eligible),
        "queries of another dimension": (torch.ones(1, 3), 2, eligible),
        "a zero query": (torch.zeros(1, 4), 2, eligible),
        "a NaN query": (torch.tensor([[nan, 1.0, 0, 0]]), 2, eligible),
        "an int mask": (ok[:1], 2, eligible.int()),
        "a 1-D mask": (ok[:1], 2, eligible[0]),
        "2 mask rows for 1 query": (ok[:1], 2, torch.ones(2, 3, dtype=torch.bool)),
    }
    for what, args in bad_searches.items():
        _expect_value_error(lambda: r.search(*args), f"search with {what}")
    expect(_same(before, r.search(ok[:1], 2, eligible)), "a rejected call must change nothing")


def _expect_value_error(call, what: str) -> None:
    try:
        call()
    except ValueError:
        return
    except Exception as exc:  # noqa: BLE001 - reported as the contract breach it is
        raise AssertionError(f"{what} must raise ValueError, raised {exc!r}") from exc
    raise AssertionError(f"{what} must raise ValueError, it was accepted")


def clustered_history(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Video-like descriptors: scenes of 20-200 frames, each a slow random walk near a centre."""
    out, total = [], 0
    while total < n:
        length = int(rng.integers(20, 200))
        walk = np.cumsum(rng.standard_normal((length, d)) * 0.05, axis=0)
        out.append(rng.standard_normal(d) + walk + 0.1 * rng.standard_normal((length, d)))
        total += length
    return np.concatenate(out)[:n].astype(np.float32)


def measure_recall(make_retriever: Callable[[], Retriever], *, frames: int = 2000,
                   dim: int = 64, queries: int = 50, k: int = 6, metric: str = "cos",
                   seed: int = 7) -> float:
    """recall@k against float64 brute force: 2 streams of scene-clustered descriptors, queries
    near a frame t over the frames before t - 20 (as the engine queries)."""
    rng = np.random.default_rng(seed)
    hist = [clustered_history(rng, frames, dim) for _ in range(2)]
    r = make_retriever()
    for s, x in enumerate(hist):
        r.add(s, torch.arange(frames), torch.from_numpy(x))
    hits = total = 0
    for _ in range(queries):
        t = int(rng.integers(100, frames))
        q = np.stack([h[t] for h in hist]) + 0.05 * rng.standard_normal((2, dim))
        q = q.astype(np.float32)
        eligible = (torch.arange(frames) < t - 20).expand(2, -1).clone()
        got = r.search(torch.from_numpy(q), k, eligible).ids
        for s, (ref, _) in enumerate(reference_search(hist, q, k, eligible, metric)):
            hits += len(set(got[s].tolist()) & set(ref.tolist()))
            total += len(ref)
    return hits / total


def check_retriever(make_retriever: Callable[[], Retriever], *, exact: bool,
                    recall: float | None = None, metric: str = "cos", score_atol: float = 1e-4,
                    max_examples: int | None = None) -> None:
    """Every rule of the Retriever contract for retrievers built by ``make_retriever()``.

    ``exact``: the brute-force answer is demanded; otherwise ``recall`` (the declared
    recall@6 on scene-clustered data) is. ``metric``: what the scores are (``cos`` or ``ip``).
    ``score_atol``: tolerance of scores (raise it for quantised storage).
    """
    if not exact and recall is None:
        raise TypeError("an approximate retriever (exact=False) must declare its recall")
    expect(isinstance(make_retriever(), Retriever), "make_retriever() must return a Retriever")
    check_search_results(make_retriever, exact=exact, metric=metric, score_atol=score_atol,
                         max_examples=max_examples)
    check_ties(make_retriever)
    check_state(make_retriever, exact=exact)
    check_bad_input(make_retriever)
    if not exact:
        got = measure_recall(make_retriever, metric=metric)
        expect(got >= recall, f"recall@6 {got:.3f} is below the declared {recall}")


__all__ = ["check_bad_input", "check_retriever", "check_search_results", "check_state",
           "check_ties", "clustered_history", "expect_scores", "expect_valid", "measure_recall",
           "reference_search"]
