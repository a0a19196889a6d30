"""Retrievers ``exact`` and ``usearch``: agreement with a float64 reference, contract properties,
chunking invariance, input errors, state round trips, the usearch masking fallbacks and recall."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lrag_framework.testing import check_retriever, reference_search, strategies
from lrag_framework.testing.retrievers import clustered_history, expect_valid
from lrag_retrievers.exact import ExactParams, register_retrievers as register_exact
from lrag_retrievers.exact_retriever import ExactRetriever
from lrag_retrievers.usearch_index import UsearchParams, register_retrievers as register_usearch
from lrag_retrievers.usearch_retriever import UsearchRetriever


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# ---------------------------------------------------------------- cases and the reference (the kit)

def cases():
    return strategies.retrieval_cases()


def add_all(retriever, hist, dtype=torch.float32, cuts=None):
    for s, x in enumerate(hist):
        bounds = [0, *(int(c) for c in (cuts[s] if cuts else [])), len(x)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            retriever.add(s, torch.arange(a, b), torch.from_numpy(x[a:b]).to(dtype))


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def check_contract(result, case, hist=None):
    expect_valid(result, case if hist is None else
                 strategies.RetrievalCase(hist, case.cuts, case.queries, case.k, case.eligible,
                                          case.kind), exact=True)


# ---------------------------------------------------------------- the kit's whole contract

@pytest.mark.parametrize("params", [ExactParams(), ExactParams(metric="ip"),
                                    ExactParams(initial_capacity=1)], ids=["cos", "ip", "cap1"])
def test_exact_keeps_the_retriever_contract(params):
    check_retriever(lambda: ExactRetriever(params), exact=True, metric=params.metric)


@pytest.mark.parametrize("params, recall, atol", [
    (UsearchParams(threads=1), 0.95, 1e-4),
    (UsearchParams(threads=1, metric="ip"), 0.95, 1e-4),
    (UsearchParams(threads=1, dtype="f16"), 0.95, 2e-3),
    (UsearchParams(threads=1, dtype="i8"), 0.85, 0.05)], ids=["f32", "ip", "f16", "i8"])
def test_usearch_keeps_the_retriever_contract(params, recall, atol):
    """Approximate: the structural rules, scores, ties, state, bad input; recall@6 as declared
    (docs/retrievers.md) on seeded scene-clustered data."""
    check_retriever(lambda: UsearchRetriever(params), exact=False, recall=recall,
                    metric=params.metric, score_atol=atol, max_examples=25)


def test_usearch_ties_beyond_the_fetch_go_to_the_newer_frame():
    """Issue 15: ids 0, 1, 2 with one vector (three add calls), save, restore, add id 10000
    with the same vector to both: the graph search fetched only old frames; now newest first."""
    v = torch.tensor([[1.0, 2.0, 3.0]])
    live = UsearchRetriever(UsearchParams(threads=1))
    for i in range(3):
        live.add(0, torch.tensor([i]), v)
    restored = UsearchRetriever(UsearchParams(threads=1))
    restored.load_state_dict(live.state_dict())
    every = torch.ones(1, 10001, dtype=torch.bool)
    for r in (live, restored):
        r.add(0, torch.tensor([10000]), v)
        assert r.search(v, 1, every).ids.tolist() == [[10000]]
    assert live.stats["tie_fallbacks"] >= 1


# ---------------------------------------------------------------- exact

@given(case=cases(), metric=st.sampled_from(["cos", "ip"]), dtype=st.sampled_from(DTYPES))
def test_exact_matches_float64_reference(case, metric, dtype):
    hist = [torch.from_numpy(x).to(dtype).double().numpy() for x in case.histories]  # as stored
    queries = torch.from_numpy(case.queries).to(dtype)
    r = ExactRetriever(ExactParams(metric=metric, initial_capacity=4))
    add_all(r, case.histories, dtype)
    res = r.search(queries, case.k, case.eligible)
    check_contract(res, case, hist)
    ref = reference_search(hist, queries.double().numpy(), case.k, case.eligible, metric)
    for s, (ref_ids, ref_sc) in enumerate(ref):
        scale = 1.0 if metric == "cos" else float(np.abs(ref_sc).max(initial=1.0))
        tol = 1e-5 * max(scale, 1.0)  # float32 scoring vs float64
        ids, sc = res.ids[s, :len(ref_ids)].numpy(), res.scores[s, :len(ref_ids)].double().numpy()
        np.testing.assert_allclose(sc, ref_sc[ref_ids], atol=tol, rtol=0)
        np.testing.assert_allclose(sc, ref_sc[ids], atol=tol, rtol=0)
        differ = ids != ref_ids  # allowed only where the reference scores tie within tol
        assert (np.abs(ref_sc[ids[differ]] - ref_sc[ref_ids[differ]]) <= 2 * tol).all()
        if case.kind == "lattice" and metric == "ip":  # integer scores: ties are exact
            assert not differ.any()


@given(case=cases(), metric=st.sampled_from(["cos", "ip"]), cap=st.integers(1, 8))
def test_exact_chunking_does_not_change_results(case, metric, cap):
    whole = ExactRetriever(ExactParams(metric=metric, initial_capacity=64))
    case.add_to(whole, chunked=False)
    chunked = ExactRetriever(ExactParams(metric=metric, initial_capacity=cap))
    case.add_to(chunked)
    a = whole.search(torch.from_numpy(case.queries), case.k, case.eligible)
    b = chunked.search(torch.from_numpy(case.queries), case.k, case.eligible)
    # Same counts and scores up to float32 rounding (BLAS may round a product over a buffer of
    # another capacity differently); ids differ only where their scores tie within that rounding.
    assert torch.equal(a.counts, b.counts)
    found = a.scores[a.ids >= 0]
    scale = max([1.0] + found.abs().tolist())
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5 * scale)
    differ = a.ids != b.ids
    assert ((a.scores - b.scores)[differ].abs() <= 2e-5 * scale).all()


def test_exact_buffer_grows_geometrically_and_keeps_history():
    r = ExactRetriever(ExactParams(initial_capacity=4))
    x = torch.randn(100, 3)
    grew = []
    for i in range(100):
        r.add(0, torch.tensor([i]), x[i:i + 1])
        if not grew or grew[-1] != r.capacity:
            grew.append(r.capacity)
    assert grew == [4, 8, 16, 32, 64, 128]
    r.add(0, torch.arange(100, 1000), torch.randn(900, 3))  # one long prefix: no doubling loop
    assert r.capacity == 1000 and len(r) == 1000
    res = r.search(x[37:38], 1, torch.ones(1, 100, dtype=torch.bool))
    assert res.ids.tolist() == [[37]]


def test_exact_masks_missing_frames_and_extra_streams():
    r = ExactRetriever()
    r.add(1, torch.tensor([0, 2, 5]), torch.eye(3))  # gaps: frames 1, 3, 4 do not exist
    q = torch.tensor([[1.0, 1.0, 1.0]] * 3)
    res = r.search(q, 5, torch.ones(3, 8, dtype=torch.bool))
    assert res.counts.tolist() == [0, 3, 0]
    assert sorted(res.ids[1, :3].tolist()) == [0, 2, 5]
    short = r.search(q[:2], 5, torch.ones(2, 3, dtype=torch.bool))  # F = 3 hides frame 5
    assert short.counts.tolist() == [0, 2]
    empty = r.search(q, 0, torch.ones(3, 8, dtype=torch.bool))
    assert empty.ids.shape == empty.scores.shape == (3, 0) and empty.counts.tolist() == [0] * 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_exact_on_gpu_matches_cpu():
    torch.manual_seed(0)
    x, q = torch.randn(2, 500, 64), torch.randn(2, 64)
    eligible = torch.rand(2, 520) < 0.7
    cpu, gpu = ExactRetriever(), ExactRetriever()
    for s in range(2):
        cpu.add(s, torch.arange(500), x[s])
        gpu.add(s, torch.arange(500), x[s].cuda())
    assert gpu.device.type == "cuda"
    a = cpu.search(q, 6, eligible)
    b = gpu.search(q.cuda(), 6, eligible.cuda())
    assert b.ids.is_cuda and torch.equal(a.ids, b.ids.cpu())
    torch.testing.assert_close(a.scores, b.scores.cpu(), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- usearch

@given(case=cases(), params=st.sampled_from([
    UsearchParams(), UsearchParams(metric="ip"), UsearchParams(dtype="f16"),
    UsearchParams(dtype="i8"), UsearchParams(metric="ip", dtype="f16"),
    UsearchParams(connectivity=2, expansion_add=1, expansion_search=1, overfetch=1.0)]))
def test_usearch_contract(case, params):
    r = UsearchRetriever(params.model_copy(update={"threads": 1}))
    case.add_to(r)
    res = r.search(torch.from_numpy(case.queries), case.k, case.eligible)
    check_contract(res, case)


def test_usearch_ties_go_to_the_newer_frame():
    r = UsearchRetriever(UsearchParams(threads=1))
    r.add(0, torch.arange(10), torch.tensor([[1.0, 0.0]]).repeat(10, 1))
    res = r.search(torch.tensor([[1.0, 0.0]]), 3, torch.ones(1, 9, dtype=torch.bool))
    assert res.ids.tolist() == [[8, 7, 6]]


def test_usearch_falls_back_to_exact_search_on_a_disconnected_graph():
    # 3 groups of 300 identical vectors and a minimal graph: HNSW reaches only a few nodes.
    base = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32))
    r = UsearchRetriever(UsearchParams(connectivity=2, expansion_add=1, expansion_search=1,
                                       threads=1))
    r.add(0, torch.arange(900), base.repeat_interleave(300, dim=0))
    eligible = torch.zeros(1, 900, dtype=torch.bool)
    eligible[0, 300:600] = True  # only the second group, queried with the first group's vector
    res = r.search(base[:1], 5, eligible)
    assert r.stats["exact_fallbacks"] == 1
    assert res.ids.tolist() == [[599, 598, 597, 596, 595]]


def test_usearch_grows_the_fetch_until_k_eligible_ids():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((2, 32)).astype(np.float32) * 5
    x = np.concatenate([centres[0] + rng.standard_normal((900, 32)).astype(np.float32),
                        centres[1] + rng.standard_normal((100, 32)).astype(np.float32)])
    eligible = torch.zeros(1, 1000, dtype=torch.bool)
    eligible[0, :850] = True  # the 150 frames nearest a centre-1 query are mostly ineligible
    eligible[0, 900:950] = False
    r, e = UsearchRetriever(UsearchParams(threads=1)), ExactRetriever()
    for retriever in (r, e):
        retriever.add(0, torch.arange(1000), torch.from_numpy(x))
    q = torch.from_numpy(centres[1:2])
    res, ref = r.search(q, 6, eligible), e.search(q, 6, eligible)
    assert r.stats["refetches"] >= 1 and r.stats["exact_fallbacks"] == 0
    assert res.ids.tolist() == ref.ids.tolist()


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_usearch_recall_against_exact(dtype):
    """2 streams x 3000 frames, dim 256, 100 queries per stream, K = 6: recall@6 >= 0.95."""
    rng = np.random.default_rng(7)
    n, d, k = 3000, 256, 6
    r, e = UsearchRetriever(UsearchParams(dtype=dtype)), ExactRetriever()
    hist = [clustered_history(rng, n, d) for _ in range(2)]
    for retriever in (r, e):
        add_all(retriever, hist)
    hits = total = 0
    for _ in range(100):
        t = int(rng.integers(100, n))  # a query at frame t over the frames evicted before it
        q = torch.from_numpy(np.stack([h[t] for h in hist]) + 0.05 * rng.standard_normal((2, d)))
        eligible = (torch.arange(n) < t - 20).expand(2, -1)
        a, b = r.search(q.float(), k, eligible), e.search(q.float(), k, eligible)
        for s in range(2):
            hits += len(set(a.ids[s].tolist()) & set(b.ids[s].tolist()))
            total += k
    assert hits / total >= 0.95, f"recall@{k} = {hits / total:.3f}"


# ---------------------------------------------------------------- both: errors, state, plugin

def both(**kw):
    return [ExactRetriever(ExactParams(**kw)), UsearchRetriever(UsearchParams(threads=1, **kw))]


@pytest.mark.parametrize("metric", ["cos", "ip"])
@pytest.mark.parametrize("which", [0, 1])
def test_bad_input_is_a_clear_error(which, metric):
    r = both(metric=metric)[which]
    ok = torch.eye(3, 4)
    r.add(0, torch.arange(3), ok)
    bad_desc = {"dimension 5, the index has 4": torch.ones(1, 5),
                "not finite": torch.tensor([[1.0, float("nan"), 0, 0]]),
                "row 1 is not finite": torch.tensor([[1.0, 0, 0, 0], [float("inf"), 0, 0, 0]]),
                "beyond 3.4e38": torch.tensor([[1e39, 0, 0, 0]], dtype=torch.float64),
                "row 0 is zero": torch.zeros(1, 4),
                "floating tensor": torch.ones(4, dtype=torch.float32)}
    for message, x in bad_desc.items():
        with pytest.raises(ValueError, match=message):
            r.add(0, torch.arange(3, 3 + max(1, x.shape[0] if x.dim() == 2 else 1)), x)
    with pytest.raises(ValueError, match="generation order"):
        r.add(0, torch.tensor([2]), ok[:1])
    with pytest.raises(ValueError, match="2 frame_ids for 1"):
        r.add(0, torch.tensor([3, 4]), ok[:1])
    with pytest.raises(ValueError, match="stream must be"):
        r.add(-1, torch.tensor([0]), ok[:1])
    eligible = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="k must be a non-negative int, got -1"):
        r.search(ok[:1], -1, eligible)
    with pytest.raises(ValueError, match="dimension 3"):
        r.search(torch.ones(1, 3), 2, eligible)
    with pytest.raises(ValueError, match="zero"):
        r.search(torch.zeros(1, 4), 2, eligible)
    with pytest.raises(ValueError, match="bool tensor"):
        r.search(ok[:1], 2, eligible.int())
    with pytest.raises(ValueError, match="2 rows for 1 queries"):
        r.search(ok[:1], 2, torch.ones(2, 3, dtype=torch.bool))
    assert r.search(ok[:1], 2, eligible).ids.tolist() == [[0, 2]]  # nothing bad got in


def test_bad_params_are_rejected_at_validation():
    with pytest.raises(ValidationError, match="metric"):
        ExactParams(metric="l2")
    with pytest.raises(ValidationError, match="dtype"):
        UsearchParams(dtype="f64")
    with pytest.raises(ValidationError, match="use metric 'cos'"):
        UsearchParams(dtype="i8", metric="ip")
    with pytest.raises(ValidationError, match="connectivity"):
        UsearchParams(connectivity=1)
    with pytest.raises(ValidationError, match="extra"):
        UsearchParams(ef=3)
    with pytest.raises(ValueError, match="beyond the f16 range"):
        UsearchRetriever(UsearchParams(metric="ip", dtype="f16")).add(
            0, torch.tensor([0]), torch.tensor([[1e5, 1.0]]))


@pytest.mark.parametrize("which", [0, 1])
def test_state_dict_round_trip_through_safetensors(which):
    rng = np.random.default_rng(3)
    hist = [clustered_history(rng, 300, 16), np.zeros((0, 16), np.float32),
            clustered_history(rng, 120, 16)]
    a = both()[which]
    add_all(a, hist)
    b = both()[which]
    b.load_state_dict(st_load(st_save(a.state_dict())))  # a plain dict of tensors survives
    q = torch.from_numpy(rng.standard_normal((3, 16)).astype(np.float32))
    eligible = torch.rand(3, 300, generator=torch.Generator().manual_seed(0)) < 0.6
    assert same(a.search(q, 6, eligible), b.search(q, 6, eligible))
    more = torch.from_numpy(rng.standard_normal((5, 16)).astype(np.float32))
    for r in (a, b):  # restored indexes are full copies: adding to them works
        r.add(0, torch.arange(300, 305), more)
        r.add(1, torch.arange(5), more)
    eligible = torch.ones(3, 305, dtype=torch.bool)
    assert same(a.search(q, 6, eligible), b.search(q, 6, eligible))
    with pytest.raises(ValueError, match="metric='cos'"):
        both(metric="ip")[which].load_state_dict(a.state_dict())


def test_state_of_an_empty_retriever_round_trips():
    for r in both():
        r.load_state_dict(r.state_dict())
        assert len(r) == 0
        res = r.search(torch.ones(2, 3), 4, torch.ones(2, 5, dtype=torch.bool))
        assert res.counts.tolist() == [0, 0]


def test_plugins_register_and_build():
    from lrag_framework.interfaces import Retriever

    got = {}
    register_exact(register=lambda name, factory, model: got.update({name: (factory, model)}))
    register_usearch(register=lambda name, factory, model: got.update({name: (factory, model)}))
    assert set(got) == {"exact", "usearch"}
    for factory, model in got.values():
        assert isinstance(factory(model()), Retriever)


def test_plugin_modules_import_without_torch():
    code = ("import sys, lrag_retrievers.exact, lrag_retrievers.usearch_index; "
            "print(sorted(m for m in ('torch', 'usearch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
