"""The engine's run-time check of retriever results (``lrag_framework.contracts``): a retriever
that breaks the contract stops the run with one ComponentError naming it and the block."""
import pytest
import torch

from lrag_framework import run
from lrag_framework.contracts import check_search_result, search_result_problem
from lrag_framework.interfaces import ComponentError, SearchResult

BREAKING = """
import torch
from lrag_framework import hookimpl
from lrag_framework.interfaces import SearchResult
from lrag_retrievers.exact_retriever import ExactRetriever


class Breaking(ExactRetriever):
    def search(self, queries, k, eligible):
        r = super().search(queries, k, eligible)
        ids, scores, counts = r.ids.clone(), r.scores.clone(), r.counts.clone()
        {body}
        return SearchResult(ids, scores, counts)


@hookimpl
def register_retrievers(register):
    register("breaking", Breaking)
"""

FAULTS = {  # what the plugin does -> what the error says
    "ineligible": ("ids[:, 0] = eligible.shape[1] - 1  # the query frame itself",
                   "is not eligible"),
    "counts_k": ("counts[:] = k", "is not a frame id below"),
    "worst_first": ("n = int(counts[0]); ids[0, :n] = ids[0, :n].flip(0); "
                    "scores[0, :n] = scores[0, :n].flip(0)", "scores are not best first"),
    "nan": ("scores[0, 0] = float('nan')", "is not finite"),
}


def small_config(tmp_path):
    return {"backbone": {"name": "tiny", "params": {
                "height": 16, "width": 16, "patch": 4, "dim": 32, "layers": 2, "heads": 2,
                "weights": None}},
            "retriever": {"name": "breaking"}, "retrieval": {"k": 4, "recency": 1},
            "generation": {"num_frames": 24, "window": 6, "sink": 1},
            "output": {"root": str(tmp_path / "runs"), "video": False}, "device": "cpu"}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_retriever_breaking_the_contract_stops_the_run(make_dist, tmp_path, fault):
    body, says = FAULTS[fault]
    make_dist("lrag-breaking", {"breaking": BREAKING.replace("{body}", body)})
    with pytest.raises(ComponentError) as err:
        run(small_config(tmp_path))
    msg = str(err.value)
    assert msg.startswith("retriever 'breaking' (lrag-breaking 1.0, plugin 'breaking') broke "
                          "the Retriever contract retrieving for the block at frame ")
    assert says in msg


def result(ids, scores, counts):
    return SearchResult(torch.tensor(ids, dtype=torch.long),
                        torch.tensor(scores, dtype=torch.float32), torch.tensor(counts))


def test_valid_results_pass_and_come_back_on_the_cpu():
    eligible = torch.tensor([[True, True, False, True], [False, False, False, False]])
    ok = result([[3, 0], [-1, -1]], [[0.9, 0.9], [-float("inf")] * 2], [2, 0])
    assert search_result_problem(ok, 2, eligible) is None
    ids, scores, counts = check_search_result(ok, 2, eligible, object(), 4)
    assert ids.dtype == torch.long and scores.dtype == torch.float32 and counts.tolist() == [2, 0]
    assert search_result_problem(result([[], []], [[], []], [0, 0]), 0, eligible) is None


@pytest.mark.parametrize("bad, says", [
    (result([[3, 0]], [[0.9, 0.8]], [2]), "shape (2,), expected (1,)"),
    (result([[3, 3]], [[0.9, 0.8]], [2]), "frame 3 is returned twice"),
    (result([[3, -1]], [[0.9, 0.8]], [1]), "beyond count 1 but holds id -1 / score 0.8"),
    (result([[2, -1]], [[0.9, -float("inf")]], [1]), "frame 2 is not eligible"),
    (result([[3, 0]], [[0.9, 0.8]], [3]), "count 3 is outside [0, k=2]"),
    (result([[3, 0]], [[float("inf"), 0.8]], [2]), "score inf of frame 3 is not finite"),
    ((1, 2), "not SearchResult"),
])
def test_each_broken_rule_is_named(bad, says):
    eligible = torch.tensor([[True, True, False, True]])
    if "expected (1,)" in says:
        eligible = torch.ones(2, 4, dtype=torch.bool)[:1]
        bad = SearchResult(bad.ids, bad.scores, torch.tensor([2, 2]))
    problem = search_result_problem(bad, 2, eligible)
    assert problem is not None and says in problem, problem
    with pytest.raises(ComponentError, match="retriever builtins.object"):
        check_search_result(bad, 2, eligible, object(), 7)
