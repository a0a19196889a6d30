"""``lrag eval`` on real world runs of the tiny backbone (no evaluation weights): PSNR against
the truth on the loop-closure frames, the comparison table, exit codes."""
import json

import pytest
import torch

import lrag_framework
from lrag_framework.cli import main
from lrag_framework.evaluation import EvalConfig, evaluate_run, evaluate_runs
from lrag_framework.evaluation.drift import PSNR_CAP
from lrag_framework.files import write_tensors
from lrag_framework.generation.plan import Geometry
from lrag_framework.outputs.report import loop_closure_frames
from lrag_framework.plugins import load_plugins

TINY = {"dim": 32, "layers": 1, "heads": 2, "weights": None}
WORLDS = [{"world": 1000001, "path": "revisit"}, {"world": 1000002, "path": "revisit"}]
FRAMES, PREFIX = 36, 3


@pytest.fixture(scope="module")
def world_run(tmp_path_factory):
    """A compare run (native + retrieval) in the world: 3 ground-truth frames, then generated."""
    root = tmp_path_factory.mktemp("runs")
    return lrag_framework.run({
        "name": "world", "backbone": {"name": "tiny", "params": TINY},
        "retrieval": {"k": 2, "recency": 1},
        "generation": {"num_frames": FRAMES, "window": 6, "sink": 1, "batch_size": 2},
        "conditionings": WORLDS, "prefix": {"source": "reference", "frames": PREFIX},
        "compare": True, "output": {"root": str(root), "fps": 8, "video_scale": 1},
        "device": "cpu"}).run_dir


def test_default_metrics_without_weights(world_run, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))  # a fresh machine
    assert main(["eval", str(world_run)]) == 0
    out = capsys.readouterr().out
    result = json.loads((world_run / "eval" / "eval.json").read_text())
    assert result["schema_version"] == 1 and result["first_generated"] == PREFIX
    assert set(result["metrics_ran"]) == {"gap_similarity", "psnr", "first_failure"}
    for metric in ("subject_consistency", "background_consistency", "aesthetic_quality",
                   "imaging_quality", "dynamic_degree"):
        assert metric in result["skipped"]
        assert sum(line.startswith(f"skipped {metric} ") for line in out.splitlines()) == 1
    assert "hf download facebook/dino-vitb16" in out and "torchvision" in out
    summary = json.loads((world_run / "summary.json").read_text())
    for mode in ("native", "retrieval"):  # the same PSNR as the run measured on its pixels
        psnr = result["modes"][mode]["psnr"]
        assert psnr["mean_generated"] == pytest.approx(summary["modes"][mode]["mean_psnr"],
                                                       abs=1e-4)
        assert psnr["loop_closure_count"] > 0 and psnr["value"] < 40
    assert result["modes"]["retrieval"]["psnr"]["precision_at_k"] == pytest.approx(
        summary["modes"]["retrieval"]["precision_at_k"])
    assert [r["mode"] for r in result["table"]] == ["native", "retrieval"]
    assert "psnr loop closure" in out and (world_run / "eval" / "metrics.png").is_file()


def test_a_rollout_rendered_from_the_truth_gives_the_psnr_cap(world_run, tmp_path):
    import shutil

    from safetensors import safe_open

    truth_run = tmp_path / "truth"
    shutil.copytree(world_run, truth_run, ignore=shutil.ignore_patterns("eval"))
    backbone = load_plugins().build("backbone", "tiny", TINY)
    refs = [backbone.reference(w, FRAMES) for w in WORLDS]
    for mode in ("native", "retrieval"):
        path = truth_run / mode / "latents.safetensors"
        with safe_open(str(path), "pt") as f:
            meta = {k: json.loads(v) for k, v in f.metadata().items()}
        write_tensors(path, {"latents": torch.stack([r.latents for r in refs])}, meta)
    result = evaluate_run(truth_run, EvalConfig(metrics=["psnr"]))
    g = Geometry(3, 6, 1, 2, 1)
    for mode in ("native", "retrieval"):
        for ref, stream in zip(refs, result["modes"][mode]["psnr"]["streams"]):
            want = torch.nonzero(loop_closure_frames(ref.same_place, g, PREFIX)).flatten()
            assert stream["loop_closure_frames"] == want.tolist() and len(want) > 0
            assert all(stream["per_frame"][i] == pytest.approx(PSNR_CAP, abs=1e-3)
                       for i in want)
            assert all(s["psnr"] == pytest.approx(PSNR_CAP, abs=1e-3)
                       for s in stream["segments"])
        assert result["modes"][mode]["psnr"]["value"] == pytest.approx(PSNR_CAP, abs=1e-3)
    generated = evaluate_run(world_run, EvalConfig(metrics=["psnr"]), write=False)
    assert generated["modes"]["native"]["psnr"]["value"] < PSNR_CAP - 50


def test_several_runs_give_one_comparison(world_run, tmp_path):
    report = evaluate_runs([world_run, world_run], EvalConfig(metrics=["gap_similarity"]),
                           output=tmp_path / "cmp.json")
    assert len(report["comparison"]) == 4
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert saved["comparison"] == json.loads(json.dumps(report["comparison"]))
    in_run = json.loads((world_run / "eval" / "eval.json").read_text())
    assert len(in_run["comparison"]) == 4


def test_exit_two_when_no_metric_can_run(world_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "empty-vbench"))
    code = main(["eval", str(world_run), "--set",
                 "metrics=[subject_consistency, aesthetic_quality]"])
    out = capsys.readouterr().out
    assert code == 2
    assert out.count("skipped ") == 2
    assert main(["eval", str(tmp_path)]) == 2  # not a run directory
    assert "not a run directory" in capsys.readouterr().err


def test_without_transformers_the_weight_metrics_say_how_to_install(world_run, capsys,
                                                                    monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    assert main(["eval", str(world_run), "--set", "metrics=[background_consistency, psnr]"]) == 0
    out = capsys.readouterr().out
    assert "skipped background_consistency (" in out and "lrag-framework[eval]" in out
