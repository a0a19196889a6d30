"""Evaluation math on inputs with known answers: VBench consistency and clip splitting, the
preprocessing sizes, gap similarity, first failure, PSNR segments (no weights needed)."""
import math

import pytest
import torch

from lrag_framework.config import ConfigError
from lrag_framework.evaluation.config import load_eval_config
from lrag_framework.evaluation.drift import (PSNR_CAP, first_failure, gap_similarity, runs_of,
                                             start_similarity)
from lrag_framework.evaluation.extractors import PREPROCESS
from lrag_framework.evaluation.vbench import (aesthetic, clip_bounds, clip_to_clip,
                                              consistency, frame_consistency, long_consistency)
from lrag_framework.outputs.report import psnr


def test_identical_features_give_consistency_one():
    f = torch.randn(1, 16).expand(10, 16)
    assert consistency(f) == pytest.approx(1.0, abs=1e-6)
    assert long_consistency(f, fps=8, seconds=0.5)["value"] == pytest.approx(1.0, abs=1e-6)


def test_consistency_follows_vbench_formula():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    # frame 1: prev 0, first 0 -> 0; frame 2: prev 0, first 1 -> 0.5; frame 3: prev -1 -> 0,
    # first -1 -> 0 (negative cosines clamp to 0)
    assert frame_consistency(f)[1:].tolist() == [0.0, 0.5, 0.0]
    assert consistency(f) == pytest.approx(0.5 / 3)
    assert consistency(f[:1]) is None


def test_clip_bounds_follow_vbench_long():
    assert clip_bounds(40, fps=8, seconds=2) == [(0, 16), (16, 32), (24, 40)]  # last extended
    assert clip_bounds(32, 8, 2) == [(0, 16), (16, 32)]
    assert clip_bounds(10, 8, 2) == [(0, 10)]  # shorter than a clip: the whole video


def test_a_cut_at_a_clip_boundary_shows_only_clip_to_clip():
    a, b = torch.randn(16), torch.randn(16)
    f = torch.cat([a.expand(16, 16), b.expand(16, 16)])  # cut at frame 16 = clip boundary
    inclip = long_consistency(f, 8, 2)
    assert inclip["value"] == pytest.approx(1.0, abs=1e-6)
    across = clip_to_clip(f, 8, 2)
    assert across["value"] < 0.99 and across["clip_starts"] == [0, 16]
    inside = long_consistency(f, 8, 4)  # one clip holds the cut
    assert inside["value"] < 0.99
    per_frame = inside["per_frame"]
    assert math.isnan(per_frame[0]) and per_frame[16] < per_frame[15] - 0.01


def test_aesthetic_is_the_laion_head_on_normalised_features_over_ten():
    head = torch.nn.Linear(2, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[10.0, 0.0]]))
        head.bias.fill_(1.0)
    f = torch.tensor([[3.0, 4.0]]).expand(20, 2)  # normalised: [0.6, 0.8] -> 6 + 1 = 7 -> 0.7
    out = aesthetic(f, head, fps=8, seconds=1)
    assert out["value"] == pytest.approx(0.7) and out["per_clip"] == pytest.approx([0.7] * 3)
    with pytest.raises(ValueError, match="2-d features"):
        aesthetic(torch.ones(4, 3), head, 8, 1)


@pytest.mark.parametrize("key", sorted(PREPROCESS))
def test_preprocess_sizes(key):
    x = torch.rand(2, 3, 480, 832) * 255  # a Wan frame: short side 480
    out = PREPROCESS[key](x)
    if key == "dino":  # VBench's dino_transform: short side to 224, no crop
        assert out.shape == (2, 3, 224, int(224 * 832 / 480))
    else:
        assert out.shape == (2, 3, 224, 224)
    gray = PREPROCESS[key](torch.full((1, 3, 64, 64), 127.5))
    mean, std = PREPROCESS[key].mean_std
    assert torch.allclose(gray[0, :, 0, 0], (0.5 - torch.tensor(mean)) / torch.tensor(std),
                          atol=1e-4)


def test_gap_similarity_of_a_static_and_a_drifting_video():
    static = torch.randn(1, 3, 4, 4).expand(30, 3, 4, 4)
    out = gap_similarity(static, [2, 5, 50], first=3)
    assert out["curve"][2] == pytest.approx(1.0) and out["curve"][5] == pytest.approx(1.0)
    assert out["curve"][50] is None  # no pair fits
    assert len(out["per_frame"][5]) == 30 - 3 - 5
    gen = torch.Generator().manual_seed(0)
    drift = torch.cumsum(torch.randn(60, 3, 4, 4, generator=gen), 0)  # a random walk
    curve = gap_similarity(drift, [2, 5, 10, 20], 0)["curve"]
    assert curve[2] > curve[5] > curve[10] > curve[20]


def test_start_similarity_is_one_at_the_start():
    x = torch.randn(8, 3, 4, 4)
    s = start_similarity(x, 3)
    assert torch.isnan(s[:3]).all() and s[3] == pytest.approx(1.0)


def test_first_failure_stays_below():
    x = torch.tensor([20.0, 20, 10, 20, 10, 10, 10])
    assert first_failure(x, 0, 15) == 4  # frame 2 recovers at 3; from 4 on it stays below
    assert first_failure(x, 0, 15, patience=1) == 2
    assert first_failure(x, 5, 15) == 5
    assert first_failure(torch.full((5,), 20.0), 0, 15) is None
    with_nan = torch.tensor([20.0, 10, math.nan, 10])
    assert first_failure(with_nan, 0, 15) == 1
    assert first_failure(torch.tensor([10.0, 10, 20]), 0, 15) is None


def test_runs_of_and_psnr_cap():
    mask = torch.tensor([False, True, True, False, True])
    assert runs_of(mask) == [(1, 3), (4, 5)]
    frames = torch.rand(4, 3, 8, 8) * 2 - 1
    assert psnr(frames, frames).tolist() == pytest.approx([PSNR_CAP] * 4)


def test_eval_config_errors_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_eval_config({"metrics": ["nope"], "clip_seconds": -1})
    assert "metrics" in str(err.value) and "clip_seconds" in str(err.value)
    cfg = load_eval_config(None, ["first_failure=[{measure: psnr, threshold: 9}]"])
    assert cfg.first_failure[0].threshold == 9
