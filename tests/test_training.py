"""Latent corpus (collect-latents, resumable) and embedder training end to end on CPU: the loss
falls, checkpoints load as ``latent_ae`` weights, a resumed run continues exactly, losses from
another plugin compose by name, and the own-video retrieval figure."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lrag_framework.cli import main as lrag
from lrag_framework.config import ConfigError
from lrag_framework.training.corpus import LatentCorpus, write_shard
from lrag_framework.plugins import load_plugins
from lrag_framework.training.retrieval_eval import own_video_top1
from lrag_framework.training.trainer import load_train_config, split_videos, train_embedder

AE = {"in_channels": 4, "spatial_h": 8, "spatial_w": 8, "latent_dim": 16, "hidden_dims": [8, 16]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 videos x 12 frames [4, 8, 8] in two shards: a shared pattern plus a drift per video."""
    root = tmp_path_factory.mktemp("corpus")
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 8, 8, generator=g)
    t = torch.linspace(0, 1, 12)[:, None, None, None]
    videos = {f"video_{i:06d}": mean + 0.3 * t * torch.randn(4, 8, 8, generator=g)
              for i in range(8)}
    for shard, keys in enumerate([list(videos)[:5], list(videos)[5:]]):
        write_shard(root / f"shard_{shard:05d}.safetensors", {k: videos[k] for k in keys},
                    [{"key": k, "frames": 12} for k in keys])
    return root


def config(corpus, run_dir, **extra) -> dict:
    return {"corpus": str(corpus), "run_dir": str(run_dir),
            "embedder": {"name": "latent_ae", "params": AE}, "seq_len": 4, "batch_size": 4,
            "steps": 30, "eval_every": 10, "log_every": 5, "val_fraction": 0.25, "lr": 3e-2,
            **extra}


def rows(run_dir, split):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


# ---------------------------------------------------------------------------- training

def test_training_end_to_end(corpus, tmp_path):
    run = tmp_path / "run"
    result = train_embedder(load_train_config(config(corpus, run)))
    train, val = rows(run, "train"), rows(run, "val")
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in val] == [10, 20, 30]
    assert train[-1]["total"] < 0.7 * train[0]["total"]
    assert val[-1]["total"] < val[0]["total"]
    for r in train:  # the total is the weighted sum of the default losses (all weight 1)
        assert r["total"] == pytest.approx(sum(r["losses"].values()), rel=1e-5)
        assert set(r["losses"]) == {"reconstruction", "window_temporal_delta",
                                    "trajectory_smoothing"}
    assert result["step"] == 30 and result["best_val"] == min(r["total"] for r in val)
    for name in ("last", "best"):
        ckpt = run / "checkpoints" / name
        assert {p.name for p in ckpt.iterdir()} == {"config.json", "model.safetensors",
                                                    "optimizer.safetensors", "optimizer.json",
                                                    "trainer_state.json"}
    state = json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 30
    emb = load_plugins().build("embedder", "latent_ae",
                               {"weights": str(run / "checkpoints" / "last")})
    x = LatentCorpus(corpus).frames(0)
    torch.testing.assert_close(emb.embed(x).norm(dim=-1), torch.ones(12))
    scores = json.loads((run / "retrieval_eval.json").read_text())
    assert scores["exclusion"] == 5 and scores["videos"] == 2 and scores["frames"] == 24
    assert set(scores["own_video_top1"]) == {"latent_ae (trained)", "avg_pool"}
    assert all(0 <= v <= 1 for v in scores["own_video_top1"].values())
    for name in ("losses.png", "retrieval_eval.png", "config.yaml"):
        assert (run / name).stat().st_size > 0
    assert not [p for p in run.rglob("*") if p.name.startswith(".")]  # no partial files left


def test_resume_continues_exactly_from_the_checkpoint(corpus, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    cfg = config(corpus, whole, steps=8, eval_every=4, log_every=2)
    train_embedder(load_train_config(cfg))
    train_embedder(load_train_config({**cfg, "run_dir": str(split), "steps": 4}))
    with pytest.raises(ConfigError, match="already has a checkpoints folder: set resume"):
        train_embedder(load_train_config({**cfg, "run_dir": str(split)}))
    last = split / "checkpoints" / "last"
    assert lrag(["train-embedder", str(write_yaml(tmp_path, {**cfg, "run_dir": str(split)})),
                 "--set", f"resume={last}"]) == 0
    a = load_file(str(whole / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(last / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    steps = [r["step"] for r in rows(split, "train")]
    assert steps == [2, 4, 6, 8] == [r["step"] for r in rows(whole, "train")]
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 8


def write_yaml(tmp_path, data) -> str:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_config_errors_are_reported_together(corpus, tmp_path):
    cfg = config(corpus, tmp_path / "r", losses=[{"name": "reconstruction"},
                                                 {"name": "window_temporal_delt"},
                                                 {"name": "window_temporal_delta",
                                                  "params": {"window": 0}}])
    cfg["embedder"]["params"] = {**AE, "latent_dims": 3}
    with pytest.raises(ConfigError) as err:
        load_train_config(cfg)
    text = str(err.value)
    assert "losses.1.name: unknown loss 'window_temporal_delt'" in text
    assert "Did you mean 'window_temporal_delta'" in text
    assert "losses.2.params.window" in text and "embedder.params.latent_dims" in text
    cfg["losses"] = [{"name": "reconstruction", "weight": -1}]
    with pytest.raises(ConfigError, match="losses.0.weight: Input should be greater"):
        load_train_config(cfg)


def test_frames_of_another_shape_are_a_clear_error(corpus, tmp_path):
    cfg = config(corpus, tmp_path / "r")
    cfg["embedder"]["params"] = {**AE, "spatial_w": 9}
    with pytest.raises(ValueError, match=r"frames \[N, 4, 8, 9\], got \[1, 4, 8, 8\]"):
        train_embedder(load_train_config(cfg))


NORM_PLUGIN = """
from pydantic import BaseModel, ConfigDict

from lrag_framework import hookimpl
from lrag_framework.interfaces import Loss


class NormParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = 1.0
    target: float = 1.0


class NormLoss(Loss):
    \"\"\"(mean embedding norm - target)^2.\"\"\"

    def __init__(self, params):
        self.weight, self.target = params.weight, params.target

    def __call__(self, inputs):
        return (inputs.embeddings.float().norm(dim=-1).mean() - self.target) ** 2


@hookimpl
def register_losses(register):
    register("embedding_norm", NormLoss, NormParams)
"""


def test_a_loss_from_another_plugin_composes_by_name(corpus, tmp_path, make_dist):
    make_dist("fake-losses", {"norm": NORM_PLUGIN})
    cfg = config(corpus, tmp_path / "r", steps=4, eval_every=4, log_every=2,
                 losses=[{"name": "reconstruction"},
                         {"name": "fake-losses:embedding_norm",
                          "params": {"weight": 0.5, "target": 2.0}}])  # API 1: params.weight
    with pytest.warns(FutureWarning, match="params.weight is deprecated"):
        train_embedder(load_train_config(cfg))
    for r in rows(tmp_path / "r", "train") + rows(tmp_path / "r", "val"):
        assert set(r["losses"]) == {"reconstruction", "fake-losses:embedding_norm"}
        terms = r["losses"]
        assert r["total"] == pytest.approx(
            terms["reconstruction"] + 0.5 * terms["fake-losses:embedding_norm"], rel=1e-5)


def test_split_is_by_video(corpus):
    cfg = load_train_config(config(corpus, "unused"))
    c = LatentCorpus(corpus)
    train, val = split_videos(c, cfg)
    assert len(val) == 2 and len(train) == 6 and not set(train) & set(val)
    again = split_videos(c, load_train_config(config(corpus, "unused")))
    assert again == (train, val)
    with pytest.raises(ConfigError, match="no video has seq_len=13 frames"):
        split_videos(c, load_train_config(config(corpus, "unused", seq_len=13)))


# ---------------------------------------------------------------------------- retrieval figure

def test_own_video_top1_honours_the_exclusion_radius():
    """Unit vectors on a circle: video 0 frame f at angle 0.2 f (f = 0..7); video 1: three
    frames at angle -0.3. Cosine order = angular distance order."""
    angles = torch.arange(8.0) * 0.2
    v0 = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # [8, 2]
    v1 = torch.tensor([[0.3]]).cos().expand(3, 1)
    v1 = torch.cat([v1, -torch.tensor([[0.3]]).sin().expand(3, 1)], dim=1)  # [3, 2]
    # no exclusion: every frame's nearest other frame is in its own video
    assert own_video_top1([v0, v1], exclusion=0) == 1.0
    # radius 2: frames 0 and 1 of video 0 find video 1 (0.3 and 0.5 away) before their first
    # own candidate (frame 3 or 4, 0.6 away); frames 2..7 find frame f-3 or f+3 (0.6) first;
    # video 1's frames exclude each other and find video 0. Hits: 6 of 11 queries.
    assert own_video_top1([v0, v1], exclusion=2) == pytest.approx(6 / 11)
    # radius 7 excludes every own frame: no hits
    assert own_video_top1([v0, v1], exclusion=7) == 0.0
    with pytest.raises(ValueError, match="exclusion radius must be >= 0, got -1"):
        own_video_top1([v0], exclusion=-1)
    with pytest.raises(ValueError, match="no query has a candidate"):
        own_video_top1([v0], exclusion=7)


# ---------------------------------------------------------------------------- collect-latents

TINY = {"height": 8, "width": 8, "patch": 4, "dim": 32, "layers": 1, "heads": 2, "weights": None}


def corpus_config(out_dir, **extra) -> dict:
    moving = [[0.5, 0.0]] * 6
    run = {"name": "c", "backbone": {"name": "tiny", "params": TINY},
           "retrieval": {"enabled": False},
           "generation": {"num_frames": 6, "window": 6, "sink": 1, "batch_size": 2, "seed": 3},
           "conditionings": [None, moving, None], "device": "cpu"}
    return {"run": run, "out_dir": str(out_dir), "shard_size": 2, **extra}


def test_collect_latents_is_resumable_and_matches_lrag_run(tmp_path, monkeypatch):
    from lrag_framework.training import corpus as corpus_mod
    from lrag_framework.training.corpus import collect_latents, load_corpus_config

    out = tmp_path / "latents"
    cfg = load_corpus_config(write_yaml(tmp_path, corpus_config(out)), [])
    real_write = corpus_mod.write_shard

    def crash_on_second(path, *args):
        if path.name == "shard_00001.safetensors":
            raise KeyboardInterrupt
        real_write(path, *args)

    monkeypatch.setattr(corpus_mod, "write_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        collect_latents(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["corpus.json", "shard_00000.safetensors"]
    first = (out / "shard_00000.safetensors").stat().st_mtime_ns
    monkeypatch.undo()
    counts = collect_latents(cfg)
    assert (counts["written"], counts["skipped"], counts["videos"]) == (1, 1, 3)
    assert (out / "shard_00000.safetensors").stat().st_mtime_ns == first
    assert lrag(["collect-latents", write_yaml(tmp_path, corpus_config(out))]) == 0  # all done

    c = LatentCorpus(out)
    assert len(c) == 3 and c.frame_shape == (3, 8, 8)
    metas = [v.meta for v in c.videos]
    assert [m["stream"] for m in metas] == [0, 1, 2]
    assert metas[1]["conditioning"] == [[0.5, 0.0]] * 6 and metas[2]["conditioning"] is None
    assert {m["seed"] for m in metas} == {3} and {m["frames"] for m in metas} == {6}
    assert metas[0]["backbone"] == {"name": "tiny", "params": TINY}

    # the same videos as the streams of `lrag run` on that config
    from lrag_framework.config import validate
    from lrag_framework.generation.pipeline import Pipeline

    run = validate(corpus_config(out)["run"])
    reference = Pipeline(run).setup(warm_up=False).generate("native").latents
    for i in range(3):
        torch.testing.assert_close(c.frames(i), reference[i], rtol=0, atol=0)

    with pytest.raises(ConfigError, match="different collection") as err:
        collect_latents(load_corpus_config(write_yaml(tmp_path, corpus_config(out)),
                                           ["run.generation.seed=4"]))
    assert "run.generation.seed: 3 in the collection, 4 now" in err.value.errors


def test_a_conditioned_baseline_is_refused_before_training(corpus, tmp_path):
    """A latent corpus holds no frame signals: `pose` as a retrieval baseline stops at once,
    before a step is trained, with the section that names it."""
    from lrag_framework.config import ConfigError

    cfg = config(corpus, tmp_path / "run",
                 retrieval_eval={"baselines": [{"name": "avg_pool"}, {"name": "pose"}]})
    with pytest.raises(ConfigError, match=r"retrieval_eval.baselines.1: 'pose' is a "
                       r"conditioned key"):
        train_embedder(load_train_config(cfg))
    assert not (tmp_path / "run").exists()
