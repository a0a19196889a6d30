"""lrag run --resume: an interrupted run finished bitwise as if never interrupted (CPU)."""
import errno
import json
import os

import pytest
import torch

import lrag_framework
from lrag_framework import cli
from lrag_framework.config import ConfigError
from lrag_framework.outputs.run_dir import stopped_run
from test_run import small_config

WARM_UP = 3  # recache calls of the warm-up (window 6, blocks of 3: 3 blocks)


def stop_at(monkeypatch, method: str, call: int, error=KeyboardInterrupt):
    """Raise ``error`` from the tiny backbone's ``method`` at its ``call``-th call."""
    from lrag_adapters.tiny.backbone import TinyBackbone

    original, calls = getattr(TinyBackbone, method), []

    def stopped(self, *args):
        calls.append(1)
        if len(calls) == call:
            raise error
        return original(self, *args)

    monkeypatch.setattr(TinyBackbone, method, stopped)
    return lambda: monkeypatch.setattr(TinyBackbone, method, original)


def config(tmp_path, **extra):
    return small_config(tmp_path, **{"compare": True, **extra})


def files_of(run_dir):
    return {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}


def frames(path):
    av = pytest.importorskip("av")
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def same_outputs(full, resumed):
    for mode in ("native", "retrieval"):
        assert torch.equal(full.latents[mode], resumed.latents[mode])
        for name in ("latents.safetensors", "retrieval.jsonl"):
            assert (full.run_dir / mode / name).read_bytes() == \
                (resumed.run_dir / mode / name).read_bytes()
        for s in (0, 1):
            a, b = (frames(r.run_dir / mode / f"stream_{s:03d}.mp4") for r in (full, resumed))
            assert len(a) == len(b) == 24 * 1 and all((x == y).all() for x, y in zip(a, b))


@pytest.mark.parametrize("method, call", [
    ("recache", WARM_UP + 8 + 3),  # retrieval mode, after its 3rd block's denoising
    ("denoise", 3 * 4 + 8 * 4 + 2 * 4 + 2),  # retrieval mode, inside its 3rd block's steps
])
def test_kill_mid_block_then_resume_is_bitwise(tmp_path, monkeypatch, method, call):
    full = lrag_framework.run(config(tmp_path), ["output.name=full"])
    restore = stop_at(monkeypatch, method, call)
    with pytest.raises(KeyboardInterrupt) as stopped:
        lrag_framework.run(config(tmp_path), ["output.name=cut"])
    assert stopped_run(stopped.value) == tmp_path / "runs" / "cut"
    restore()
    cut = tmp_path / "runs" / "cut"
    kept = files_of(cut)
    assert "native/stream_000.mp4" in kept and "retrieval/stream_000.partial.mp4" in kept
    assert "retrieval/state/batch_000/block_00000_00003.safetensors" in kept
    assert "summary.json" not in kept
    resumed = lrag_framework.run(resume=cut)
    same_outputs(full, resumed)
    r = resumed.summary["resumed"]
    assert r["native"] == "kept" and r["retrieval"]["blocks_fed_back"] == 2
    assert not any("state/" in f or ".partial" in f for f in files_of(cut))
    assert files_of(cut) == files_of(full.run_dir)


def test_finished_batch_is_kept_and_the_next_resumed(tmp_path, monkeypatch):
    cfg = config(tmp_path, retrieval={"enabled": False}, compare=False)
    overrides = ["generation.batch_size=1"]
    full = lrag_framework.run(cfg, overrides + ["output.name=full"])
    restore = stop_at(monkeypatch, "recache", WARM_UP + 8 + 5)  # stream 1, 5th block
    with pytest.raises(KeyboardInterrupt):
        lrag_framework.run(cfg, overrides + ["output.name=cut"])
    restore()
    resumed = lrag_framework.run(cfg, overrides + ["output.name=cut"],
                                 resume=tmp_path / "runs" / "cut")
    assert torch.equal(full.latents["native"], resumed.latents["native"])
    assert resumed.summary["resumed"]["native"]["batches_kept"] == 1
    assert resumed.summary["resumed"]["native"]["blocks_fed_back"] == 4


def test_resume_keeps_the_block_starts_of_a_prefix(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    save_file({"latents": torch.rand(4, 3, 16, 16) * 2 - 1}, str(tmp_path / "p.safetensors"))
    cfg = config(tmp_path, prefix={"path": str(tmp_path / "p.safetensors")}, compare=False,
                 output={"root": str(tmp_path / "runs"), "video": False, "save_latents": False})
    full = lrag_framework.run(cfg, ["output.name=full"])  # blocks 0, 3, 4, 7, ...
    restore = stop_at(monkeypatch, "recache", WARM_UP + 5)
    with pytest.raises(KeyboardInterrupt):
        lrag_framework.run(cfg, ["output.name=cut"])
    restore()
    resumed = lrag_framework.run(resume=tmp_path / "runs" / "cut")
    assert torch.equal(full.latents["retrieval"], resumed.latents["retrieval"])
    assert files_of(resumed.run_dir) == files_of(full.run_dir)  # blocks removed, no latents
    assert not any(f.endswith(".safetensors") for f in files_of(resumed.run_dir))


def test_changed_config_or_overrides_are_refused(tmp_path, monkeypatch):
    restore = stop_at(monkeypatch, "recache", WARM_UP + 4)
    with pytest.raises(KeyboardInterrupt):
        lrag_framework.run(config(tmp_path), ["output.name=cut"])
    restore()
    cut = tmp_path / "runs" / "cut"
    with pytest.raises(ConfigError, match="generation.seed: 0 in the run, 1 now"):
        lrag_framework.run(config(tmp_path), ["output.name=cut", "generation.seed=1"],
                           resume=cut)
    code = cli.main(["run", "--resume", str(cut), "--set", "generation.num_frames=27"])
    assert code == cli.BAD_INPUT
    before = files_of(cut)
    assert cli.main(["run", "--resume", str(cut)]) == cli.OK
    assert "summary.json" in files_of(cut) and before - files_of(cut) <= {
        f for f in before if "state/" in f or ".partial" in f}


def test_complete_run_says_so(tmp_path, capsys):
    full = lrag_framework.run(config(tmp_path, output={"root": str(tmp_path / "runs"),
                                                       "video": False}))
    summary = (full.run_dir / "summary.json").read_bytes()
    assert cli.main(["run", "--resume", str(full.run_dir)]) == cli.OK
    assert "already complete" in capsys.readouterr().out
    assert (full.run_dir / "summary.json").read_bytes() == summary


def test_not_a_run_dir_is_bad_input(tmp_path, capsys):
    assert cli.main(["run", "--resume", str(tmp_path / "nope")]) == cli.BAD_INPUT
    assert "does not exist" in capsys.readouterr().err


def one_error_line(err: str) -> bool:
    """One ``error:`` line and no traceback (progress bars aside)."""
    return sum(ln.startswith("error:") for ln in err.splitlines()) == 1 and "Traceback" not in err


def config_file(tmp_path, **extra):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(small_config(tmp_path, **extra)))
    return str(path)


def test_failure_after_first_block_keeps_state_and_says_how_to_resume(tmp_path, monkeypatch,
                                                                      capsys):
    stop_at(monkeypatch, "recache", WARM_UP + 3, RuntimeError("disk on fire"))
    code = cli.main(["run", config_file(tmp_path), "--set", "output.name=cut"])
    err = capsys.readouterr().err
    assert code == cli.FAILED and one_error_line(err)
    assert "disk on fire" in err and "--resume" in err and "Traceback" not in err
    assert (tmp_path / "runs" / "cut" / "resume.json").is_file()


def test_failure_before_first_block_leaves_no_run_dir(tmp_path, monkeypatch, capsys):
    stop_at(monkeypatch, "recache", WARM_UP + 1)  # inside the first block
    (tmp_path / "runs" / "other").mkdir(parents=True)  # an existing root keeps what it holds
    assert cli.main(["run", config_file(tmp_path), "--set",
                     f"output.root={tmp_path / 'runs' / 'new' / 'deeper'}"]) == cli.INTERRUPTED
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["other"]
    err = capsys.readouterr().err
    assert one_error_line(err) and "nothing was kept" in err


def test_summary_json_of_a_resumed_run_names_what_was_resumed(tmp_path, monkeypatch):
    restore = stop_at(monkeypatch, "recache", WARM_UP + 2)
    with pytest.raises(KeyboardInterrupt):
        lrag_framework.run(config(tmp_path, output={"root": str(tmp_path / "runs"),
                                                    "name": "cut", "video": False}))
    restore()
    lrag_framework.run(resume=tmp_path / "runs" / "cut")
    summary = json.loads((tmp_path / "runs" / "cut" / "summary.json").read_text())
    assert summary["resumed"]["native"]["blocks_fed_back"] == 1
    assert summary["resumed"]["retrieval"]["blocks_fed_back"] == 0


# ---------------------------------------------------------------- a full disk, a read-only root
# Tests run as root, whom chmod does not stop: the OS errors are raised at the one write
# mechanism (files.atomic_path creating its temporary file), as a full disk or a read-only
# file system would raise them there.

def refuse_writes(monkeypatch, code: int, name: str):
    """Every atomic write of a file whose name contains ``name`` fails with errno ``code``."""
    from lrag_framework import files

    original = files._new_temp

    def refusing(path):
        if name in path.name:
            raise OSError(code, os.strerror(code), str(path.with_name(f".{path.name}.tmp")))
        return original(path)

    monkeypatch.setattr(files, "_new_temp", refusing)
    return lambda: monkeypatch.setattr(files, "_new_temp", original)


def cli_run(argv):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", *argv])
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")]
    assert "Traceback" not in err.getvalue() and len(lines) == 1, err.getvalue()
    return code, lines[0]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["full", "read-only"])
@pytest.mark.parametrize("name", ["config.yaml", "block_00000_00003"])
def test_a_write_refused_before_the_first_block_leaves_nothing(tmp_path, monkeypatch, code,
                                                              name):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(config(tmp_path, compare=False)))
    refuse_writes(monkeypatch, code, name)
    got, line = cli_run([str(cfg)])
    assert got == cli.FAILED and "nothing was kept" in line
    assert f"{name}" in line and os.strerror(code) in line and errno.errorcode[code] in line
    assert ".tmp" not in line  # the file is named, not its temporary
    assert not (tmp_path / "runs").exists()  # nor the output root the run created


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["full", "read-only"])
def test_a_write_refused_mid_run_keeps_a_resumable_run(tmp_path, monkeypatch, code):
    full = lrag_framework.run(config(tmp_path), ["output.name=full"])
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(config(tmp_path)))
    restore = refuse_writes(monkeypatch, code, "block_00009_00012")  # native, after 3 blocks
    got, line = cli_run([str(cfg), "--set", "output.name=cut"])
    cut = tmp_path / "runs" / "cut"
    assert got == cli.FAILED and os.strerror(code) in line
    assert f"lrag run --resume {cut}" in line
    kept = files_of(cut)
    assert {f"native/state/batch_000/block_{a:05d}_{a + 3:05d}.safetensors"
            for a in (0, 3, 6)} <= kept
    assert "native/stream_000.partial.mp4" in kept and "summary.json" not in kept
    assert not any(".tmp" in f for f in kept)
    restore()
    resumed = lrag_framework.run(resume=cut)
    same_outputs(full, resumed)
    assert resumed.summary["resumed"]["native"]["blocks_fed_back"] == 3


def test_a_suite_whose_first_write_is_refused_leaves_nothing(tmp_path, monkeypatch, capsys):
    import yaml

    from test_suites import WORLDS, suite_config

    cfg, suite = tmp_path / "cfg.yaml", tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump(suite_config(tmp_path)))
    suite.write_text(yaml.safe_dump(WORLDS[:2]))
    refuse_writes(monkeypatch, errno.ENOSPC, "suite.json")
    got, line = cli_run([str(cfg), "--prompts", str(suite)])
    assert got == cli.FAILED and "suite.json: No space left on device (ENOSPC)" in line
    assert not any((tmp_path / "runs").iterdir())
