"""run(config) end to end on the default backbone, and config validation."""
import json

import pytest
import torch
import yaml

import lrag_framework
from lrag_framework.config import ConfigError, load_config
from lrag_framework.cli import format_summary

SMALL_TINY = {"height": 16, "width": 16, "patch": 4, "dim": 32, "layers": 2, "heads": 2,
              "weights": None}


def small_config(tmp_path, **extra):
    cfg = {"name": "t", "backbone": {"name": "tiny", "params": dict(SMALL_TINY)},
           "retrieval": {"k": 2, "recency": 1},
           "generation": {"num_frames": 24, "window": 6, "sink": 1, "batch_size": 2},
           "conditionings": [None], "samples_per_conditioning": 2,
           "output": {"root": str(tmp_path / "runs"), "fps": 4}, "device": "cpu"}
    cfg.update(extra)
    return cfg


def test_run_writes_video_log_and_summary(tmp_path):
    result = lrag_framework.run(small_config(tmp_path, compare=True))
    d = result.run_dir
    assert {p.name for p in d.iterdir()} >= {"config.yaml", "summary.json", "native",
                                             "retrieval", "compare_000.mp4", "compare_001.mp4"}
    for mode in ("native", "retrieval"):
        assert (d / mode / "stream_000.mp4").stat().st_size > 0
        assert result.latents[mode].shape == (2, 24, 3, 16, 16)
    assert not any(p.name.startswith(".") for p in d.rglob("*"))  # no partial files left
    log = [json.loads(line) for line in (d / "retrieval" / "retrieval.jsonl").read_text()
           .splitlines()]
    assert log and any(any(ids) for e in log for ids in e["ids"])
    for entry in log:  # every retrieved id was eligible: evicted, outside the recency guard
        start = entry["block_start"]
        limit = max(1, start - (6 - 1)) - 1  # evicted before the block, minus R = 1
        for ids in entry["ids"]:
            assert all(1 <= i < limit for i in ids)
    assert (d / "native" / "retrieval.jsonl").read_text() == ""
    summary = json.loads((d / "summary.json").read_text())
    assert summary["modes"]["retrieval"]["frames"] == 24
    text = format_summary(summary)
    assert "one run of each mode" in text and "dropped" not in text
    summary["modes"]["retrieval"]["memory"].update(kv_dropped_frames=7, kv_capacity_frames=12)
    assert "dropped the K/V of 7 frames" in format_summary(summary)
    resolved = yaml.safe_load((d / "config.yaml").read_text())
    assert resolved["generation"]["window"] == 6 and resolved["retriever"]["name"] == "exact"


def test_same_seed_same_latents_through_run(tmp_path):
    cfg = small_config(tmp_path, output={"root": str(tmp_path / "runs"), "video": False})
    a = lrag_framework.run(cfg).latents["retrieval"]
    b = lrag_framework.run(cfg).latents["retrieval"]
    assert torch.equal(a, b)
    other = lrag_framework.run(cfg, overrides=["generation.seed=1"]).latents["retrieval"]
    assert not torch.equal(a, other)


def test_streams_do_not_depend_on_batching(tmp_path):
    cfg = small_config(tmp_path, output={"root": str(tmp_path / "runs"), "video": False})
    a = lrag_framework.run(cfg).latents["retrieval"]
    b = lrag_framework.run(cfg, overrides=["generation.batch_size=1"]).latents["retrieval"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_run_dir_is_never_overwritten(tmp_path):
    cfg = small_config(tmp_path, output={"root": str(tmp_path / "runs"), "name": "fixed",
                                         "video": False})
    lrag_framework.run(cfg)
    with pytest.raises(ConfigError, match="never overwritten"):
        lrag_framework.run(cfg)


def test_prefix_from_file(tmp_path):
    from safetensors.torch import save_file

    prefix = torch.rand(5, 3, 16, 16) * 2 - 1
    save_file({"latents": prefix}, str(tmp_path / "p.safetensors"))
    cfg = small_config(tmp_path, prefix={"path": str(tmp_path / "p.safetensors")},
                       output={"root": str(tmp_path / "runs"), "video": False})
    out = lrag_framework.run(cfg).latents["retrieval"]
    assert torch.equal(out[:, :5], prefix.expand(2, -1, -1, -1, -1))


def test_validate_reports_every_error_at_once(tmp_path):
    bad = small_config(tmp_path)
    bad["retrieval"]["k"] = -1
    bad["generation"]["num_frames"] = 0
    bad["retriever"] = {"name": "exactt"}
    bad["backbone"]["params"]["dim"] = "wide"
    bad["unknown_section"] = 1
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    text = str(err.value)
    for needle in ("retrieval.k", "generation.num_frames", "exactt", "exact",
                   "backbone.params.dim", "unknown_section"):
        assert needle in text, needle


def test_config_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(small_config(tmp_path)))
    cfg = load_config(path, ["retrieval.placement=reference", "generation.seed=7"])
    assert cfg.retrieval.placement == "reference" and cfg.generation.seed == 7
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_reference_geometry_error_is_a_config_error(tmp_path):
    cfg = small_config(tmp_path, retrieval={"k": 4, "placement": "reference"})
    with pytest.raises(ConfigError, match="no room"):
        lrag_framework.run(cfg)


def test_world_run_reports_against_ground_truth(tmp_path):
    params = dict(SMALL_TINY, height=64, width=64, patch=16)
    cfg = small_config(tmp_path, backbone={"name": "tiny", "params": params},
                       conditionings=[{"world": 3, "path": "revisit"}],
                       samples_per_conditioning=1, compare=True,
                       prefix={"source": "reference", "frames": 6},
                       generation={"num_frames": 30, "window": 6, "sink": 1})
    result = lrag_framework.run(cfg)
    d = result.run_dir
    assert (d / "error.png").stat().st_size > 0 and (d / "retrieval_heatmap.png").stat().st_size
    metrics = json.loads((d / "metrics.json").read_text())
    from lrag_adapters.world import make_clip

    truth = torch.from_numpy(make_clip(3, 30, "revisit")[0])
    for mode in ("native", "retrieval"):
        assert torch.equal(result.latents[mode][0, :6], truth[:6])  # the prefix is ground truth
        psnr = metrics[mode]["psnr"][0]
        assert len(psnr) == 30 and min(psnr[:6]) > 90  # prefix frames: exact
        assert metrics[mode]["mean_psnr"] < 40  # random weights cannot match the world
    precision = metrics["retrieval"]["precision_at_k"]
    assert precision is not None and 0 <= precision <= 1
    assert metrics["native"]["precision_at_k"] is None
    summary = json.loads((d / "summary.json").read_text())
    assert summary["modes"]["retrieval"]["precision_at_k"] == precision


@pytest.mark.parametrize("retriever", [{"name": "usearch", "params": {"dtype": "f16"}},
                                       {"name": "exact", "params": {"metric": "ip"}}])
def test_both_retrievers_run_inside_run(tmp_path, retriever):
    cfg = small_config(tmp_path, retriever=retriever,
                       output={"root": str(tmp_path / "runs"), "video": False})
    result = lrag_framework.run(cfg)
    log = [json.loads(line) for line in
           (result.run_dir / "retrieval" / "retrieval.jsonl").read_text().splitlines()]
    assert any(ids for e in log for ids in e["ids"])
    for entry in log:
        limit = max(1, entry["block_start"] - 5) - 1
        assert all(1 <= i < limit for ids in entry["ids"] for i in ids)


def test_example_run_configs_validate():
    from pathlib import Path

    examples = Path(__file__).parent.parent / "docs" / "examples"
    run_configs = [p for p in examples.glob("*.yaml")
                   if "backbone" in yaml.safe_load(p.read_text())]
    assert run_configs
    for path in run_configs:
        load_config(path)


def test_interrupted_run_keeps_playable_partial_videos_only(tmp_path, monkeypatch):
    av = pytest.importorskip("av")
    from lrag_adapters.tiny.backbone import TinyBackbone

    recache, calls = TinyBackbone.recache, []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == 8:  # after the warm-up (3 blocks) and 4 blocks of the run
            raise KeyboardInterrupt
        return recache(self, *args)

    monkeypatch.setattr(TinyBackbone, "recache", interrupted)
    from lrag_framework.outputs.run_dir import stopped_run

    with pytest.raises(KeyboardInterrupt) as err:
        lrag_framework.run(small_config(tmp_path, output={"root": str(tmp_path / "runs"),
                                                          "name": "cut", "fps": 4}))
    assert stopped_run(err.value) == tmp_path / "runs" / "cut"
    videos = sorted((tmp_path / "runs" / "cut").rglob("*.mp4"))
    assert [v.name for v in videos] == ["stream_000.partial.mp4", "stream_001.partial.mp4"]
    with av.open(str(videos[0])) as container:  # what was generated is on disk and plays
        assert sum(1 for _ in container.decode(video=0)) == 4 * 3
