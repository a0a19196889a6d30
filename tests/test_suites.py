"""Prompt suites: the suite file, stable names and noise, the index, failed items, resume."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lrag_framework import cli
from lrag_framework.config import ConfigError
from lrag_framework.outputs.suite_dir import run_suite
from lrag_framework.suites import NAME_LIMIT, noise_key, parse_suite

SMALL_TINY = {"height": 64, "width": 64, "patch": 8, "dim": 32, "layers": 2, "heads": 2,
              "weights": None}  # the world's frame size, so ground truth starts each video
WORLDS = [{"conditioning": {"world": 7 + i, "path": "revisit"}} for i in range(4)]


def suite_config(tmp_path, **extra) -> dict:
    """The tiny default backbone (small random weights) on world camera paths, 24 frames from
    6 ground-truth frames, retrieval on, video off, one stream a batch."""
    cfg = {"name": "suite", "backbone": {"name": "tiny", "params": dict(SMALL_TINY)},
           "retrieval": {"k": 2, "recency": 1},
           "generation": {"num_frames": 24, "window": 6, "sink": 1, "batch_size": 1},
           "prefix": {"source": "reference", "frames": 6},
           "output": {"root": str(tmp_path / "runs"), "video": False}, "device": "cpu"}
    return cfg | extra


def write(path, data):
    path.write_text(yaml.safe_dump(data) if path.suffix == ".yaml" else data)
    return path


def latents_of(run_dir) -> dict:
    return {p.relative_to(run_dir).as_posix(): load_file(p)["latents"]
            for p in sorted(run_dir.glob("*/*.safetensors"))}


# ---------------------------------------------------------------------------- the suite file

def test_text_file_one_prompt_a_line(tmp_path):
    path = write(tmp_path / "p.txt", "# a comment\n\na red cat\n  a dog in the snow  \n\n"
                                     "a red cat\n# end\n")
    items = parse_suite(path)
    assert [i.conditioning for i in items] == ["a red cat", "a dog in the snow", "a red cat"]
    assert [i.name for i in items] == ["a_red_cat", "a_dog_in_the_snow", "a_red_cat-2"]
    assert [i.position for i in items] == [0, 1, 2]


def test_yaml_items_and_shorthands(tmp_path):
    long = "a very long prompt about a cat walking along an endless beach at sunset " * 3
    path = write(tmp_path / "p.yaml", [
        "plain text", {"prompt": long, "seed": 5}, {"name": "sched", "schedule": [
            {"start": 0, "prompt": "a"}, {"start": 12, "prompt": "b"}]},
        {"image": "start.png", "prompt": "from an image"}, {"conditioning": {"world": 3}}])
    items = parse_suite(path)
    assert items[0].name == "plain_text" and items[0].conditioning == "plain text"
    assert items[1].seed == 5 and len(items[1].name) <= NAME_LIMIT + 9
    assert items[1].name.startswith("a_very_long_prompt") and items[1].name[-9] == "-"
    assert items[2].conditioning[1] == {"start": 12, "prompt": "b"}
    assert items[3].image == str((tmp_path / "start.png").resolve())
    assert items[3].name.startswith("from_an_image-")
    assert items[4].name.startswith("world_3-")
    assert parse_suite(path) == items  # names are a function of the file


def test_names_are_identities_not_positions(tmp_path):
    """Adding an item in front changes no other item's name or noise key."""
    a = parse_suite(write(tmp_path / "a.yaml", ["a cat", {"conditioning": {"world": 1}}]))
    b = parse_suite(write(tmp_path / "b.yaml", ["a dog", "a cat", {"conditioning": {"world": 1}}]))
    assert [i.name for i in a] == [i.name for i in b[1:]]
    assert [i.noise(0, 0) for i in a] == [i.noise(0, 0) for i in b[1:]]
    assert a[0].noise(0, 0) != a[0].noise(1, 0)  # samples differ
    assert noise_key("a_cat", 0) == noise_key("a_cat", 0) < 2 ** 63


def test_file_errors_are_reported_at_once(tmp_path):
    path = write(tmp_path / "p.yaml", [{"prompt": "a", "schedule": []}, {"colour": 1},
                                       {"prompt": "b", "name": "Not Safe"}, 3,
                                       {"prompt": "c", "name": "x"}, {"prompt": "d", "name": "x"},
                                       {"prompt": "e", "seed": -1}])
    with pytest.raises(ConfigError) as err:
        parse_suite(path)
    text = str(err.value)
    for needle in ("item 1: give one of", "item 2: unknown keys ['colour']", "item 3: name",
                   "item 4: an item is a prompt", "names given twice: ['x']", "item 7: seed"):
        assert needle in text
    with pytest.raises(ConfigError, match="not found"):
        parse_suite(tmp_path / "none.txt")
    with pytest.raises(ConfigError, match="expected a list"):
        parse_suite(write(tmp_path / "m.json", '{"a": 1}'))


# ---------------------------------------------------------------------------- running a suite

def test_failed_items_are_recorded_and_the_suite_goes_on(tmp_path, capsys):
    cfg = write(tmp_path / "cfg.yaml", suite_config(tmp_path, compare=True))
    suite = write(tmp_path / "s.yaml", [WORLDS[0], {"image": "missing.png", "name": "bad"},
                                        {"conditioning": {"world": "x"}, "name": "worse"}])
    code = cli.main(["run", str(cfg), "--prompts", str(suite),
                     "--set", "generation.batch_size=4"])
    out = capsys.readouterr().out
    assert code == cli.FAILED
    assert "3 items, 6 videos: 2 ok, 4 failed" in out
    assert "bad sample 0 native: ConfigError: prefix.path:" in out and "missing.png" in out
    run_dir = next((tmp_path / "runs").iterdir())
    rows = [json.loads(line) for line in (run_dir / "index.jsonl").read_text().splitlines()]
    assert [(r["item"], r["mode"], r["status"]) for r in rows] == [
        (rows[0]["item"], "native", "ok"), (rows[0]["item"], "retrieval", "ok"),
        ("bad", "native", "failed"), ("bad", "retrieval", "failed"),
        ("worse", "native", "failed"), ("worse", "retrieval", "failed")]
    assert all((run_dir / f).is_file() for r in rows[:2] for f in r["files"].values())
    assert rows[0]["files"]["latents"] == f"native/{rows[0]['item']}.s0.safetensors"
    assert "ValueError: invalid literal" in rows[4]["reason"] and rows[2]["files"] == {}
    assert not list(run_dir.glob("index.rank*"))  # merged into index.jsonl
    assert len(yaml.safe_load((run_dir / "config.yaml").read_text())["conditionings"]) == 3
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failed"] == 4 and summary["ok"] == 2 and summary["world_size"] == 1


def test_prompt_and_prompts_together_is_an_error(tmp_path, capsys):
    suite = write(tmp_path / "s.txt", "a cat\n")
    assert cli.main(["run", "--prompt", "x", "--prompts", str(suite)]) == cli.BAD_INPUT
    assert "--prompt or --prompts" in capsys.readouterr().err


def test_an_added_item_changes_no_video_and_a_seed_gives_the_plain_run(tmp_path):
    """Noise follows names: [A, B] and [C, A, B] give A and B bitwise the same. An item with
    its own seed is the one-item ``lrag run`` with that seed."""
    import lrag_framework

    cfg = suite_config(tmp_path)
    first = run_suite(cfg, write(tmp_path / "a.yaml", [WORLDS[0], WORLDS[1]]))
    seeded = {**WORLDS[2], "seed": 11, "name": "seeded"}
    second = run_suite(cfg, write(tmp_path / "b.yaml", [seeded, WORLDS[0], WORLDS[1]]))
    a, b = latents_of(first.run_dir), latents_of(second.run_dir)
    assert set(a) < set(b)
    for name, x in a.items():
        assert torch.equal(x, b[name]), name
    plain = lrag_framework.run({**cfg, "conditionings": [WORLDS[2]["conditioning"]]},
                               ["generation.seed=11"])
    assert torch.equal(plain.latents["retrieval"][0], b["retrieval/seeded.s0.safetensors"])


def test_resume_redoes_only_what_is_missing(tmp_path):
    cfg = suite_config(tmp_path, samples_per_conditioning=2)
    done = run_suite(cfg, write(tmp_path / "s.yaml", WORLDS[:2]))
    before = latents_of(done.run_dir)
    lost = sorted(before)[1]
    (done.run_dir / lost).unlink()  # one video's files gone: it is redone
    again = run_suite(resume=done.run_dir)
    assert again.summary["skipped_complete"] == 3 and again.summary["ok"] == 4
    assert [r["videos"] for r in again.summary["ranks"]] == [1]
    after = latents_of(done.run_dir)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(ConfigError, match="not a suite run directory"):
        run_suite(resume=tmp_path)


def test_an_interrupted_suite_keeps_its_videos_and_resumes(tmp_path, monkeypatch, capsys):
    from lrag_framework.generation.pipeline import Pipeline

    cfg = write(tmp_path / "cfg.yaml", suite_config(tmp_path))
    suite = write(tmp_path / "s.yaml", WORLDS[:3])
    generate, calls = Pipeline.generate, []

    def stop_at_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "generate", stop_at_the_second)
    assert cli.main(["run", str(cfg), "--prompts", str(suite)]) == cli.INTERRUPTED
    run_dir = next((tmp_path / "runs").iterdir())
    assert f"lrag run --resume {run_dir}" in capsys.readouterr().err
    monkeypatch.setattr(Pipeline, "generate", generate)
    assert cli.main(["run", "--resume", str(run_dir), "--set", "generation.num_frames=12"]) \
        == cli.BAD_INPUT  # a suite is finished with its own config
    assert "generation.num_frames: 24 in the run, 12 now" in capsys.readouterr().err
    assert cli.main(["run", "--resume", str(run_dir)]) == cli.OK
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["skipped_complete"] == 1 and summary["ok"] == 3


def test_the_example_suites_parse():
    from pathlib import Path

    examples = Path(__file__).parents[1] / "docs" / "examples"
    world = parse_suite(examples / "world_suite.yaml")
    assert [i.name for i in world][1] == "second_world" and world[3].seed == 7
    assert all(isinstance(i.conditioning, dict) for i in world)
    text = parse_suite(examples / "prompts.txt")
    assert len(text) == 3 and text[0].name.startswith("a_red_fox_trots")
