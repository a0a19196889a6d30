"""The conditioned ``pose`` embedder: its kernel, its contract, and the engine's use of it."""
import math

import pytest
import torch

from lrag_adapters.tiny.backbone import TinyBackbone
from lrag_adapters.tiny.params import TinyParams
from lrag_embedders.plugin import PoseParams, build_pose
from lrag_framework.generation.engine import Engine, EngineOptions, stream_generator
from lrag_framework.generation.plan import Geometry
from lrag_framework.interfaces import ComponentError, Conditioning
from lrag_framework.plugins import load_plugins
from lrag_framework.testing import check_embedder


def test_pose_cosine_is_the_gaussian_kernel_of_the_positions():
    emb = build_pose(PoseParams(sigma=0.5, period=64))
    g = torch.Generator().manual_seed(0)
    p, q = (torch.rand(200, 2, generator=g) * 60 - 30 for _ in range(2))
    frames = torch.randn(200, 3, 4, 4, generator=g)
    cos = (emb.embed(frames, p) * emb.embed(frames, q)).sum(-1)
    d = (p - q).double()
    d = d - 64 * torch.round(d / 64)  # the kernel's period
    expected = torch.exp(-d ** 2 / (2 * 0.5 ** 2)).mean(-1)
    assert torch.allclose(cos.double(), expected, atol=1e-3)
    assert torch.allclose(emb.embed(frames, p).norm(dim=-1), torch.ones(200), atol=1e-5)


def test_pose_with_a_latent_weight_mixes_in_avg_pool():
    w = 0.3
    emb = build_pose(PoseParams(latent_weight=w))
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 6, 4, 5, 5, generator=g)
    p = torch.zeros(6, 2)
    look = torch.nn.functional.normalize(a.mean((2, 3)), dim=-1) @ \
        torch.nn.functional.normalize(b.mean((2, 3)), dim=-1).T
    cos = (emb.embed(a, p) * emb.embed(b, p)).sum(-1)
    assert torch.allclose(cos, w * look.diagonal() + (1 - w), atol=1e-5)


@pytest.mark.parametrize("latent_weight", [0.0, 0.5])
def test_pose_keeps_the_conditioned_embedder_contract(latent_weight):
    check_embedder(lambda: build_pose(PoseParams(latent_weight=latent_weight)), (3, 6, 5),
                   signal_dim=2, max_examples=25)


def test_pose_refuses_signals_it_cannot_key():
    emb = build_pose(PoseParams(period=8))
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="one signal row per frame"):
        emb.embed(x)
    with pytest.raises(ValueError, match="leaves the key's range"):
        emb.embed(x, torch.tensor([[0.0, 0.0], [4.5, 0.0]]))
    with pytest.raises(ValueError, match="NaN or inf"):
        emb.embed(x, torch.tensor([[0.0, math.nan], [0.0, 0.0]]))


def test_the_tiny_conditioning_signals_the_integrated_camera_position():
    from lrag_adapters.world import make_clip

    bb = TinyBackbone(TinyParams(dim=32, heads=2, layers=1, weights=None))
    item = {"world": 1000001, "path": "revisit"}
    cond = bb.encode_conditioning([item], 40)
    _, _, truths = make_clip(1000001, 40, "revisit")
    x = torch.tensor([t.x for t in truths], dtype=torch.float64)
    x = x - x[0]  # the truth wraps at the panorama width; the path here stays far from it
    got = cond.frame_signals(torch.arange(40))
    assert got.shape == (1, 40, 2) and got.dtype == torch.float32
    assert torch.allclose(got[0, :, 0].double(), x / 64, atol=1e-6)
    assert torch.equal(cond.frame_signals(torch.tensor([7, 3])), got[:, [7, 3]])


class Silent(Conditioning):
    """A conditioning that says nothing per frame (a prompt)."""


def test_the_engine_refuses_a_conditioned_embedder_without_signals():
    bb = TinyBackbone(TinyParams(height=16, width=16, patch=4, dim=32, layers=1, heads=2,
                                 weights=None))
    registry = load_plugins()
    engine = Engine(bb, registry.build("embedder", "pose", {}),
                    registry.build("retriever", "exact", {}),
                    EngineOptions(Geometry(3, 9, 1, 2, 1)))
    with pytest.raises(ComponentError, match=r"embedder 'pose' .* is conditioned, but its "
                       r"conditioning \(Silent\) has no per-frame signals"):
        engine.generate(Silent(), [stream_generator(0, 0)], 12)


def test_a_short_rollout_of_the_shipped_weights_retrieves_the_same_place(tmp_path):
    """World 1000005's revisit path comes back within 60 generated frames: the pose key finds
    the frames of the same place at the ceiling's precision, far above chance, whatever the
    generated pixels look like."""
    import json

    import lrag_framework
    from lrag_adapters.world import make_clip, overlap_matrix

    cfg = {"name": "short", "backbone": {"name": "tiny", "params": {"weights": "builtin"}},
           "embedder": {"name": "pose"}, "retrieval": {"k": 3, "recency": 5},
           "generation": {"num_frames": 72, "seed": 0},
           "conditionings": [{"world": 1000005, "path": "revisit"}],
           "prefix": {"source": "reference", "frames": 12},
           "output": {"root": str(tmp_path), "video": False}, "device": "cpu"}
    run_dir = lrag_framework.run(cfg).run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())["retrieval"]
    truths = make_clip(1000005, 72, "revisit")[2]
    same = torch.from_numpy(overlap_matrix(truths, truths) >= 0.5)
    g = Geometry(3, 12, 1, 3, 5)
    eligible = [(s, g.eligible(s, torch.ones(72, dtype=torch.bool))) for s in range(15, 72, 3)]
    chance = [float(same[s, :s][e].float().mean()) for s, e in eligible if e.any()]
    assert metrics["precision_ceiling"] > 0.3
    assert metrics["precision_at_k"] >= 0.9 * metrics["precision_ceiling"]
    assert metrics["precision_at_k"] >= 3 * sum(chance) / len(chance)
