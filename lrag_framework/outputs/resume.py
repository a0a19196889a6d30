"""What an interrupted run keeps so that ``lrag run --resume RUN_DIR`` can finish it.

Inside a run directory (``docs/resume.md``):

```
resume.json                         the request: the config as validated (before budget auto),
                                    sha256 of the start frames and of given initial noise, and
                                    what the memory rule resolved; written with config.yaml
MODE/state/batch_SSS/               one batch of streams (SSS: its first stream index)
    block_AAAAA_BBBBB.safetensors   clean latents [B, F, C, H, W] of frames [AAAAA, BBBBB),
                                    written atomically as each block completes
    done.json                       the batch is finished (videos closed): streams and its
                                    retrieval log
MODE/state/mode.json                the mode is finished: its summary
summary.json                        the run is complete (the state folders are removed then)
```

A resume keeps finished modes and batches and feeds the saved blocks of an unfinished batch
back through the engine (``Engine.generate(done=...)``). ``ModeState`` is the per-mode view the
pipeline reads and writes (``Pipeline.generate(state=...)``); a prompt suite can use the same
``batch_done`` / ``blocks`` to skip complete outputs and redo the rest.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import torch
from torch import Tensor

from ..config import ConfigError, config_differences
from ..files import read_tensors, write_json, write_tensors

REQUEST = "resume.json"
_BLOCK = re.compile(r"block_(\d{5,})_(\d{5,})\.safetensors")


def tensor_sha256(x: Tensor | None) -> str | None:
    """sha256 of a tensor's shape, dtype and bytes (None for None)."""
    if x is None:
        return None
    data = x.detach().cpu().contiguous()
    h = hashlib.sha256(f"{list(data.shape)} {data.dtype}".encode())
    h.update(data.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ModeState:
    """The saved blocks and finished batches of one mode of a run."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._pending = None  # (streams, start, latents, copied event or None): not written yet

    def _batch(self, streams: list[int]) -> Path:
        return self.folder / f"batch_{streams[0]:03d}"

    def save_block(self, streams: list[int], start: int, clean: Tensor) -> None:
        """The clean latents [B, F, C, H, W] of frames [start, start + F) of a batch, written
        one block late (at the next ``save_block``, ``finish_batch`` or ``flush``): on CUDA
        they are copied to page-locked memory without a host sync, and by the next block the
        copy has long landed, so saving never stops the GPU. ``clean`` must not change after."""
        self.flush()
        copied = None
        if clean.device.type == "cuda":
            host = torch.empty(clean.shape, dtype=clean.dtype, pin_memory=True)
            clean = host.copy_(clean, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
        self._pending = (streams, start, clean, copied)

    def flush(self) -> None:
        """Write the block ``save_block`` holds back, if any."""
        if self._pending is None:
            return
        streams, start, clean, copied = self._pending
        self._pending = None
        if copied is not None:
            copied.synchronize()
        folder = self._batch(streams)
        folder.mkdir(parents=True, exist_ok=True)
        end = start + clean.shape[1]
        write_tensors(folder / f"block_{start:05d}_{end:05d}.safetensors", {"latents": clean},
                      {"streams": streams})

    def blocks(self, streams: list[int]) -> list[Tensor]:
        """The saved blocks of a batch from frame 0 on, in order, up to the first gap."""
        folder = self._batch(streams)
        found = {}
        for path in folder.glob("block_*.safetensors") if folder.is_dir() else ():
            m = _BLOCK.fullmatch(path.name)
            if m:
                found[int(m[1])] = (int(m[2]), path)
        out, at = [], 0
        while at in found:
            end, path = found[at]
            out.append(read_tensors(path, what="a saved block of latents")["latents"])
            at = end
        return out

    def has_blocks(self) -> bool:
        return any(self.folder.glob("batch_*/block_*.safetensors"))

    def finish_batch(self, streams: list[int], log: list[dict]) -> None:
        self.flush()
        write_json(self._batch(streams) / "done.json", {"streams": streams, "log": log})

    def batch_done(self, streams: list[int]) -> list[dict] | None:
        """The retrieval log of a finished batch, None while unfinished."""
        path = self._batch(streams) / "done.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if data["streams"] != streams:
            raise ConfigError([f"{path}: holds streams {data['streams']}, not {streams}"])
        return data["log"]

    def finish_mode(self, summary: dict) -> None:
        write_json(self.folder / "mode.json", summary)

    def mode_done(self) -> dict | None:
        """The summary of a finished mode, None while unfinished."""
        path = self.folder / "mode.json"
        return json.loads(path.read_text()) if path.is_file() else None


class RunState:
    """The resumable state of one run directory."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def mode(self, mode: str) -> ModeState:
        return ModeState(self.run_dir / mode / "state")

    @property
    def complete(self) -> bool:
        return (self.run_dir / "summary.json").is_file()

    def has_blocks(self) -> bool:
        return any(self.mode(m).has_blocks() for m in ("native", "retrieval"))

    def write_request(self, request: dict) -> None:
        write_json(self.run_dir / REQUEST, request)

    def read_request(self) -> dict:
        path = self.run_dir / REQUEST
        if not path.is_file():
            what = "does not exist" if not self.run_dir.exists() else \
                f"is not a resumable run directory (no {REQUEST})"
            raise ConfigError([f"--resume: {self.run_dir} {what}"])
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError([f"--resume: {path} is damaged: {err}"]) from None

    def check_same(self, old: dict, new: dict) -> None:
        """Refuse a resume whose config, overrides or inputs differ from the run's."""
        errors = config_differences(old["config"], new["config"])
        for key in ("prefix_sha256", "initial_noise_sha256"):
            if old.get(key) != new.get(key):
                errors.append(f"{key.removesuffix('_sha256')}: the start frames or noise "
                              f"differ from the interrupted run's")
        if errors:
            raise ConfigError([f"--resume: {self.run_dir} was started with another config "
                               f"or inputs; a resume must use the same ones (or none)"] + errors)

    def clear(self) -> None:
        """Remove the saved blocks (the run is complete)."""
        for mode in ("native", "retrieval"):
            shutil.rmtree(self.mode(mode).folder, ignore_errors=True)
