"""Files and checkpoints: the one place where the project writes or reads a file.

- Atomic writes: a file (or a folder) appears under its final name only once complete.
- Tensors in safetensors, byte-reproducible (the header's keys are written in sorted order).
- Safe reading: safetensors, or ``torch.load(weights_only=True)`` for the public ``.pt``
  checkpoints; a refused or corrupt file is one ``CheckpointError`` naming the file.
- Strict state-dict loading with one report of missing, unexpected and mis-shaped keys.
- Optimizer state as safetensors + JSON (no pickles), for every trainer's checkpoints.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor

from .interfaces import ComponentError


class CheckpointError(ComponentError):
    """A weights or checkpoint file is missing, unreadable or does not fit its model."""


# ---------------------------------------------------------------------------- atomic writes

def partial_name(path: str | Path) -> Path:
    """The sibling name of a playable partial output (a growing video) until it is complete:
    ``dir/NAME.partial.SUFFIX``. Not a temporary file: a stopped run keeps it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def _new_temp(path: Path) -> Path:
    """A new empty file beside ``path`` under a unique hidden name that keeps the suffix
    (ffmpeg and matplotlib pick the format from it): created with ``O_EXCL`` (as
    ``tempfile.mkstemp``, but with the mode the umask gives a new file, not 0600)."""
    while True:
        tmp = path.with_name(f".{path.stem[:48]}.{os.getpid()}-{secrets.token_hex(4)}"
                             f".tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a new temporary file beside ``path`` (unique per call: concurrent writers of one
    target never share it); rename it onto ``path`` only if the block succeeds, else remove
    it. Every complete file the project writes goes through here (the one write mechanism)."""
    path = Path(path)
    try:
        tmp = _new_temp(path)
    except OSError as err:  # e.g. a read-only file system: name the file, not its temporary
        raise OSError(err.errno, err.strerror, str(path)) from None
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:  # e.g. a full disk
        if err.filename != str(tmp):
            raise
        raise OSError(err.errno, err.strerror, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(folder: str | Path):
    """Yield an empty temporary sibling folder; swap it in for ``folder`` if the block succeeds
    (an existing ``folder`` is replaced; a failure leaves the old one untouched)."""
    folder = Path(folder)
    tmp, old = folder.with_name(f".{folder.name}.partial"), folder.with_name(f".{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def os_error_text(err: OSError) -> str:
    """``FILE: what the system said (ENAME)``, e.g. a full disk or a read-only file system."""
    name = errno.errorcode.get(err.errno or 0)
    what = f"{err.strerror or err}" + (f" ({name})" if name else "")
    return f"{err.filename}: {what}" if err.filename else what


def folder_error(folder: str | Path) -> str | None:
    """Why ``folder`` could not be created (or written into): its nearest existing ancestor is
    not a folder, not writable, or refuses a new folder (tried with an empty temporary one,
    removed at once: this catches what permissions do not say, e.g. ``/proc`` or a read-only
    mount for root); None when it can (a full disk shows only when writing)."""
    at = Path(folder)
    while not at.exists() and at != at.parent:
        at = at.parent
    if not at.is_dir():
        return f"cannot create {folder}: {at} is not a folder"
    if not os.access(at, os.W_OK | os.X_OK):
        return f"cannot create {folder}: {at} is not writable"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".lrag-probe-", dir=at))
    except OSError as err:
        return f"cannot create {folder}: {at} refuses new folders ({os_error_text(err)})"
    return None


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one row to a JSON-lines log (a log may end in a torn line after a crash:
    ``read_jsonl`` skips it)."""
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """The complete rows of an appended JSON-lines log (a torn line after a crash is skipped)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def write_yaml(path: str | Path, data: dict) -> None:
    import yaml

    write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def write_figure(fig, path: str | Path, dpi: int = 120) -> None:
    """A ``matplotlib.figure.Figure`` as PNG (made without pyplot: no backend switch)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


# ---------------------------------------------------------------------------- tensors

def tensor_bytes(tensors: dict[str, Tensor], metadata: dict[str, Any] | None = None) -> bytes:
    """A safetensors file as bytes; metadata values are stored as JSON. The header is rewritten
    with sorted keys (safetensors writes its metadata in hash order), so equal inputs give
    equal bytes."""
    from safetensors.torch import save

    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    raw = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data stays 8-byte aligned
    return struct.pack("<Q", len(text)) + text + raw[8 + n:]


def write_tensors(path: str | Path, tensors: dict[str, Tensor],
                  metadata: dict[str, Any] | None = None) -> None:
    data = tensor_bytes(tensors, metadata)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_tensors(path: str | Path, device: str | torch.device = "cpu",
                 what: str = "a safetensors file") -> dict[str, Tensor]:
    """All tensors of a safetensors file; a missing or corrupt file is one CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found: expected {what}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read {what}: {err}") from None


def read_metadata(path: str | Path, what: str = "a safetensors file") -> dict[str, Any]:
    """The metadata of a safetensors file, values decoded from JSON where they are JSON."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found: expected {what}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read {what}: {err}") from None
    out = {}
    for key, value in meta.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _refusal(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without torch's advice on how to
    lift the safety (this project never does)."""
    import re

    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"holds a pickled object ({found.group(1)}), which is never unpickled"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"is not readable ({lines[-1] if lines else type(err).__name__})"


def torch_load(path: str | Path, what: str) -> Any:
    """A ``.pt``/``.pth`` checkpoint through ``torch.load(weights_only=True)`` (tensors and
    plain containers only; nothing is executed). Refusals and corrupt files: CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found: expected {what}")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling refused or a corrupt file
        raise CheckpointError(f"{path}: cannot read {what} with torch.load(weights_only=True): "
                              f"the file {_refusal(err)}") from None


def read_state(path: str | Path, what: str) -> dict[str, Tensor]:
    """A state dict from safetensors (by suffix) or a ``.pt`` file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_tensors(path, what=what)
    data = torch_load(path, what)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected {what} (a dict), got {type(data).__name__}")
    return data


def fingerprint(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's size, first and last MiB: cheap on an 11 GB checkpoint, and the tail of
    a torch zip checkpoint is its central directory, which lists the CRC-32 of every tensor."""
    import hashlib

    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(chunk))
        if size > chunk:
            f.seek(max(size - chunk, chunk))
            digest.update(f.read())
    return digest.hexdigest()


# ---------------------------------------------------------------------------- state dicts

def _few(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items)} in all)" if len(items) > n else "")


def state_mismatch(expected: dict[str, Tensor], state: dict[str, Tensor]) -> str | None:
    """One line naming missing, unexpected and mis-shaped keys; None when ``state`` fits."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {list(state[k].shape)} (model {list(v.shape)})"
              for k, v in expected.items()
              if k in state and torch.is_tensor(state[k]) and state[k].shape != v.shape]
    parts = [f"missing {_few(missing)}" if missing else "",
             f"unexpected {_few(unexpected)}" if unexpected else "",
             f"wrong shapes {_few(shapes)}" if shapes else ""]
    parts = [p for p in parts if p]
    return "; ".join(parts) if parts else None


def load_state_strict(module: torch.nn.Module, state: dict[str, Tensor], source: str,
                      hint: str = "", assign: bool = False) -> None:
    """Load ``state`` into ``module`` only if every key and shape fits; else one
    CheckpointError naming ``source`` and what differs (plus ``hint``)."""
    problem = state_mismatch(module.state_dict(), state)
    if problem:
        raise CheckpointError(f"{source} does not match the model ({problem})"
                              + (f"; {hint}" if hint else ""))
    module.load_state_dict(state, strict=True, assign=assign)


# ---------------------------------------------------------------------------- optimizer state

OPTIMIZER_FILE, OPTIMIZER_META = "optimizer.safetensors", "optimizer.json"


def save_optimizer(folder: Path, opt: torch.optim.Optimizer) -> None:
    """Optimizer state into ``folder``: tensors in safetensors, the rest in JSON."""
    sd = opt.state_dict()
    tensors = {f"{pid}.{k}": v for pid, st in sd["state"].items() for k, v in st.items()
               if torch.is_tensor(v)}
    scalars = {str(pid): {k: v for k, v in st.items() if not torch.is_tensor(v)}
               for pid, st in sd["state"].items()}
    (folder / OPTIMIZER_FILE).write_bytes(tensor_bytes(tensors))
    (folder / OPTIMIZER_META).write_text(
        json.dumps({"param_groups": sd["param_groups"], "scalars": scalars}, indent=1))


def load_optimizer(folder: Path, opt: torch.optim.Optimizer, device) -> None:
    meta = json.loads((folder / OPTIMIZER_META).read_text())
    state: dict[int, dict] = {int(p): dict(v) for p, v in meta["scalars"].items()}
    for key, value in read_tensors(folder / OPTIMIZER_FILE, device, "optimizer state").items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def is_checkpoint(folder: Path, *names: str) -> bool:
    """Whether ``folder`` holds a complete checkpoint: the optimizer files and ``names``."""
    return all((folder / n).is_file() for n in (OPTIMIZER_FILE, OPTIMIZER_META, *names))
