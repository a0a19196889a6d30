"""Files: atomic writes (a file appears under its final name only once complete), tensors in
safetensors. Every module that writes or reads a file goes through here."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from torch import Tensor


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")  # keeps the suffix for ffmpeg
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict | None = None):
    from safetensors.torch import save_file

    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
