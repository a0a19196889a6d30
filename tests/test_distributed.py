"""Data parallel suites: torchrun's world, devices per rank, 2 gloo processes equal one, a
killed rank resumed."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from lrag_framework import cli
from lrag_framework.config import ConfigError
from lrag_framework.distributed import World, rank_device, world_from_env
from lrag_framework.outputs.suite_dir import SuiteWriter, run_suite

from test_suites import WORLDS, latents_of, suite_config, write

TIMEOUT = 90  # seconds for one multi-process suite on a loaded 2-core machine


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """4 world items, their config, and the single-process outputs."""
    tmp = tmp_path_factory.mktemp("suite")
    cfg = write(tmp / "cfg.yaml", suite_config(tmp))
    items = write(tmp / "items.yaml", WORLDS)
    single = run_suite(cfg, items)
    return tmp, cfg, items, latents_of(single.run_dir)


def test_world_from_torchrun_environment():
    assert world_from_env({}) == World()
    w = world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                        "LOCAL_WORLD_SIZE": "2"})
    assert (w.rank, w.size, w.local_rank, w.local_size, w.main) == (3, 4, 1, 2, False)
    assert w.shard(list(range(10))) == [3, 7]
    with pytest.raises(ConfigError, match="RANK 4 of WORLD_SIZE 2"):
        world_from_env({"RANK": "4", "WORLD_SIZE": "2"})


def test_devices_per_rank_and_clear_mismatch_errors(monkeypatch):
    w = World(rank=1, size=2, local_rank=1, local_size=2)
    assert rank_device(World(), "cuda:1") == "cuda:1"  # one process: the config's device
    assert rank_device(w, "cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device(w, "auto") == rank_device(w, "cuda") == "cuda:1"
    with pytest.raises(ConfigError, match="names one GPU"):
        rank_device(w, "cuda:0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ConfigError, match=r"2 processes on this node but 1 GPU\(s\) are "
                                          r"visible \(CUDA_VISIBLE_DEVICES=0\)"):
        rank_device(w, "auto")


def test_plain_run_under_torchrun_asks_for_a_suite(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["run"]) == cli.BAD_INPUT
    assert "give --prompts" in capsys.readouterr().err


def test_two_gloo_processes_equal_one(suite):
    """torchrun, 2 CPU ranks: the same files, bitwise (batch 1), and one merged index."""
    tmp, cfg, items, single = suite
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "lrag_framework", "run", str(cfg), "--prompts", str(items),
           "--set", "output.name=two"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 items, 4 videos: 4 ok, 0 failed" in done.stdout
    run_dir = tmp / "runs" / "two"
    two = latents_of(run_dir)
    assert two.keys() == single.keys()
    assert all(torch.equal(two[k], single[k]) for k in single)
    rows = [json.loads(line) for line in (run_dir / "index.jsonl").read_text().splitlines()]
    assert [r["position"] for r in rows] == [0, 1, 2, 3]
    assert [r["rank"] for r in rows] == [0, 1, 0, 1]  # sharded by items
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and [r["videos"] for r in summary["ranks"]] == [2, 2]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["device"] == "cpu"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode != 0  # rank 0 cannot create the directory: no rank waits for it
    assert again.stderr.count("runs are never overwritten") == 2  # both ranks say why


def _rank(rank: int, port: int, argv: list[str]) -> None:
    """One rank of a 2-process suite; rank 1 dies (os._exit) once its first video is indexed."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    if rank == 1:
        row = SuiteWriter._row

        def row_then_die(self, *args, **kwargs):
            row(self, *args, **kwargs)
            os._exit(17)

        SuiteWriter._row = row_then_die
    sys.exit(cli.main(argv))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_killed_rank_is_resumed(suite):
    """Rank 1 dies after its first video: its second is lost, nothing else; --resume on one
    process finishes the suite with the single-process outputs."""
    tmp, cfg, items, single = suite
    argv = ["run", str(cfg), "--prompts", str(items), "--set", "output.name=killed"]
    with pytest.raises(mp.ProcessExitedException, match="exit code 17"):
        mp.start_processes(_rank, args=(free_port(), argv), nprocs=2, join=True,
                           start_method="spawn")
    run_dir = tmp / "runs" / "killed"
    shard = (run_dir / "index.rank1.jsonl").read_text().splitlines()
    assert [json.loads(line)["position"] for line in shard] == [1]
    before = sum(1 for p in run_dir.glob("index.rank*.jsonl")
                 for _ in p.read_text().splitlines())
    assert not (run_dir / "index.jsonl").exists()
    code = cli.main(["run", "--resume", str(run_dir)])
    assert code == cli.OK
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["skipped_complete"] == before and summary["ok"] == 4
    assert summary["ranks"][0]["videos"] == 4 - before  # only the lost ones were redone
    resumed = latents_of(run_dir)
    assert resumed.keys() == single.keys()
    assert all(torch.equal(resumed[k], single[k]) for k in single)
