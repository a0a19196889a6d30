"""CUDA graphs over the Wan DiT's passes: buffer reuse on any device, replays on CUDA."""
import pytest
import torch
from lrag_adapters.wan.graphs import GraphedPasses
from safetensors.torch import save_file

import lrag_framework

SIZES = {"num_layers": 2, "dim": 64, "num_heads": 2, "ffn_dim": 96, "freq_dim": 16,
         "text_dim": 24, "text_len": 8, "latent_channels": 4, "latent_height": 4,
         "latent_width": 6}


def test_a_shape_gets_persistent_buffers_from_its_second_sight_and_old_shapes_are_dropped():
    passes = GraphedPasses(model=None, keep=1)
    a, b = (2, 1, 30, 2, 8), (2, 1, 36, 2, 8)
    first = passes.context_buffers(a, torch.float32, torch.device("cpu"))
    second = passes.context_buffers(a, torch.float32, torch.device("cpu"))
    third = passes.context_buffers(a, torch.float32, torch.device("cpu"))
    assert first[0] is not second[0] and second[0] is third[0] and second[1] is third[1]
    assert second[0].shape == a and second[0].data_ptr() != second[1].data_ptr()
    passes.graphs[(a, False)], passes.pool = "a graph of shape a", "its pool"
    passes.context_buffers(b, torch.float32, torch.device("cpu"))
    passes.context_buffers(b, torch.float32, torch.device("cpu"))  # keep=1: a is dropped
    assert list(passes.buffers) == [b] and not passes.graphs and passes.pool is None


def test_passes_on_other_buffers_run_the_model_as_it_is():
    calls = []
    passes = GraphedPasses(model=lambda *args: calls.append(args) or "eager")
    k = torch.zeros(2, 1, 30, 2, 8)
    assert passes(None, None, (None, None), k, k.clone(), None, None, False) == "eager"
    assert len(calls) == 1 and passes.captures == 0


def run_config(tmp_path, graphs: bool, retrieval: bool) -> dict:
    prompt = tmp_path / "prompt.safetensors"
    if not prompt.exists():
        save_file({"prompt_embeds": torch.randn(5, 24, generator=torch.Generator()
                                                .manual_seed(0))}, str(prompt))
    return {"backbone": {"name": "self_forcing", "params": {"random_init": True,
                                                           "cuda_graphs": graphs, **SIZES}},
            "embedder": {"name": "avg_pool", "params": {}},
            "retriever": {"name": "exact", "params": {}},
            "retrieval": {"enabled": retrieval, "k": 2, "recency": 1},
            "generation": {"num_frames": 30, "window": 6, "sink": 1, "seed": 3},
            "conditionings": [str(prompt)], "device": "cuda",
            "output": {"root": str(tmp_path / "runs"), "video": False}}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
@pytest.mark.parametrize("retrieval", [False, True])
def test_graphed_runs_replay_and_match_eager_runs_bitwise_on_cuda(tmp_path, monkeypatch,
                                                                   retrieval):
    captures = []
    capture = GraphedPasses._capture
    monkeypatch.setattr(GraphedPasses, "_capture",
                        lambda self, *a: captures.append(1) or capture(self, *a))
    mode = "retrieval" if retrieval else "native"
    eager = lrag_framework.run(run_config(tmp_path, False, retrieval)).latents[mode]
    assert not captures
    graphed = lrag_framework.run(run_config(tmp_path, True, retrieval)).latents[mode]
    assert captures  # the steady-state blocks replayed graphs
    assert torch.equal(graphed, eager)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
def test_replays_follow_their_inputs_and_a_dropped_shape_frees_its_pool_on_cuda():
    def toy(x, t, rope, k_buf, v_buf, mask, cross, return_kv):
        return x * 2 + k_buf.sum() + v_buf.sum() + t.sum() + rope[0].sum() + cross.sum()

    passes, cuda = GraphedPasses(toy, keep=1), torch.device("cuda")
    rope = (torch.ones(3, device=cuda), torch.zeros(3, device=cuda))
    cross = torch.ones(2, device=cuda)
    for i, shape in enumerate([(2, 3), (2, 3), (2, 3), (4, 3), (4, 3), (4, 3)]):
        k, v = passes.context_buffers(shape, torch.float32, cuda)
        k.fill_(i)
        v.fill_(1)
        x, t = torch.randn(5, device=cuda), torch.full((2,), float(i), device=cuda)
        out = passes(x, t, rope, k, v, None, cross, False)
        expected = x * 2 + i * k.numel() + v.numel() + 2 * i + 3 + 2
        torch.testing.assert_close(out, expected)
    assert passes.captures == 2 and list(passes.buffers) == [(4, 3)]


def test_a_failed_capture_names_the_way_out(monkeypatch):
    class Refusing:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            raise RuntimeError("operation not permitted when stream is capturing\nmore")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: None)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    monkeypatch.setattr(torch.cuda, "graph", Refusing)
    passes = GraphedPasses(model=lambda *args: None)
    x = torch.zeros(2)
    with pytest.raises(RuntimeError, match=r"operation not permitted .*\); run it eagerly with "
                                           r"backbone.params.cuda_graphs: false"):
        passes._capture([x, x, x, x, None, x], x, x, False)
    assert passes.captures == 0
