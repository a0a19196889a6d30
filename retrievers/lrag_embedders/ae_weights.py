"""``latent_ae`` weights on disk, loaded strictly (every key present, none extra, shapes equal).

Two formats:

- our folder: ``config.json`` (name, kind, distribution, lrag_version, schema_version, params =
  the architecture) + ``model.safetensors`` (the state dict);
- the public LongLive-RAG checkpoint (``ae_latent_mem.pt`` / ``ae_epoch_best.pt`` written by its
  ``ae/train.py``): a ``torch.save`` dict with ``model`` = state dict and ``config`` = the training
  config (architecture fields in_channels, spatial_h, spatial_w, latent_dim, hidden_dims; the
  rest ignored). Read with ``torch.load(weights_only=True)``; key names are the same as ours.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from lrag_framework.files import load_state_strict, read_tensors, torch_load

from .latent_ae import AEShape, LatentAE

NAME = "latent_ae"
SCHEMA_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
SHAPE_FIELDS = ("in_channels", "spatial_h", "spatial_w", "latent_dim", "hidden_dims")


def shape_from_dict(data: dict, source: str) -> AEShape:
    """The architecture from a config dict (fields missing: upstream defaults, as upstream)."""
    known = {k: data[k] for k in SHAPE_FIELDS if k in data}
    try:
        values = {k: tuple(map(int, v)) if k == "hidden_dims" else int(v)
                  for k, v in known.items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: bad architecture in config {known}: {err}") from None
    dims = values.get("hidden_dims", (1,))
    sizes = [v for k, v in values.items() if k != "hidden_dims"] + list(dims)
    if not dims or min(sizes) < 1:
        raise ValueError(f"{source}: architecture sizes must be >= 1 and hidden_dims non-empty, "
                         f"got {known}")
    return AEShape(**values)


def load_strict(model: LatentAE, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model``; a missing, unexpected or mis-shaped key is one
    CheckpointError (a ValueError)."""
    load_state_strict(model, state, f"{source} (latent_ae {model.shape})")


def read_folder(folder: Path) -> tuple[AEShape, dict[str, Tensor]]:
    cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (cfg_path, w_path):
        if not path.is_file():
            raise ValueError(f"latent_ae weights folder {folder} has no {path.name}")
    config = json.loads(cfg_path.read_text())
    if config.get("name") != NAME:
        raise ValueError(f"{cfg_path}: name is {config.get('name')!r}, expected {NAME!r}")
    if config.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{cfg_path}: schema_version {config.get('schema_version')!r} is not "
                         f"supported (this version reads {SCHEMA_VERSION})")
    return shape_from_dict(config.get("params", {}), str(cfg_path)), read_tensors(
        w_path, what="latent_ae weights")


def read_public(path: Path) -> tuple[AEShape, dict[str, Tensor]]:
    """The public ``{model, config}`` checkpoint (only tensors and plain values are unpickled)."""
    ckpt = torch_load(path, "a LongLive-RAG AE checkpoint ({model, config})")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"{path}: expected a dict with a 'model' state dict, "
                         f"got {type(ckpt).__name__}"
                         + (f" with keys {sorted(map(str, ckpt))[:8]}" if isinstance(ckpt, dict)
                            else ""))
    config = ckpt.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a 'config' dict of hyper-parameters")
    return shape_from_dict(config, str(path)), ckpt["model"]


def read_weights(path: str | Path) -> tuple[AEShape, dict[str, Tensor]]:
    """(architecture, state dict) from a weights folder or a public ``.pt`` checkpoint."""
    path = Path(path)
    if path.is_dir():
        return read_folder(path)
    if path.is_file() and path.suffix in (".pt", ".pth"):
        return read_public(path)
    raise ValueError(f"latent_ae weights {path}: expected a folder with {CONFIG_FILE} + "
                     f"{WEIGHTS_FILE} or a LongLive-RAG .pt checkpoint"
                     + ("" if path.exists() else " (path does not exist)"))


def load_latent_ae(path: str | Path) -> LatentAE:
    shape, state = read_weights(path)
    model = LatentAE(shape)
    load_strict(model, state, str(path))
    return model


def folder_config(shape: AEShape) -> dict:
    from lrag_framework import __version__

    return {"name": NAME, "kind": "embedder", "distribution": "lrag-framework",
            "lrag_version": __version__, "schema_version": SCHEMA_VERSION,
            "params": shape.to_json()}


def save_latent_ae(model: LatentAE, folder: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``folder`` (each file atomically)."""
    from lrag_framework.files import write_json, write_tensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    write_tensors(folder / WEIGHTS_FILE, state)
    write_json(folder / CONFIG_FILE, folder_config(model.shape))
    return folder
