"""Checkpoint loading for the Wan2.1 causal family: strict, safe (safetensors or
``torch.load(weights_only=True)``), one clear error per bad file.

Layouts (checked against the public loading code):
- Base folder as ``hf download Wan-AI/Wan2.1-T2V-1.3B`` lays it out: ``config.json`` and
  ``diffusion_pytorch_model.safetensors`` (or a sharded ``.safetensors.index.json``), keys as
  ``WanModel.state_dict()``.
- Generator ``.pt`` (Self-Forcing, Causal-Forcing, CausVid, LongLive, LongLive-RAG): a dict with
  ``generator`` and/or ``generator_ema`` (or ``model``) entries holding the state dict of
  ``WanDiffusionWrapper``: keys prefixed ``model.``; EMA entries may carry FSDP wrapper
  artifacts (``_fsdp_wrapped_module.``, also ``_checkpoint_wrapped_module.``, ``_orig_mod.``),
  which the public loaders strip.
- LoRA ``.pt`` (LongLive ``trainer/distillation.py`` save, peft ``get_peft_model_state_dict``):
  ``{"generator_lora": {...}}`` or the bare dict, keys
  ``base_model.model.blocks.N.<linear>.lora_{A,B}.weight`` over every ``nn.Linear`` of the
  blocks; merged as ``W += alpha / rank * B @ A``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from lrag_framework.files import CheckpointError, read_state, state_mismatch, torch_load

from .model import WanConfig, WanDiT
from .presets import WAN_BASE_DOWNLOAD, WanParams

ARTIFACTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
CONFIG_FIELDS = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "freq_dim",
                 "text_len", "eps")


def load_dit(params: WanParams, cfg: WanConfig) -> WanDiT:
    """The DiT with weights from the params' checkpoints (on CPU), or on the meta device for
    ``random_init`` (materialised by ``WanBackbone.to``)."""
    with torch.device("meta"):
        model = WanDiT(cfg)
    if params.random_init:
        return model
    base = Path(params.base_dir) if params.base_dir else None
    if base is not None and (base / "config.json").is_file():
        check_config(base / "config.json", cfg)
    if params.generator_ckpt:
        path = Path(params.generator_ckpt)
        state = generator_state(path, params.use_ema, type(params).download)
    else:
        path = base
        state = base_state(base)
    if params.lora_ckpt:
        merge_lora(state, Path(params.lora_ckpt), params.lora_rank, params.lora_alpha,
                   type(params).download)
    check_state(model, state, path)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _missing(path: Path, what: str, download: str) -> CheckpointError:
    return CheckpointError(f"wan: {path} not found: expected {what}. Download it with: {download}")


def check_config(path: Path, cfg: WanConfig) -> None:
    """The sizes in a Wan ``config.json`` must match the configured model."""
    data = json.loads(path.read_text())
    wrong = [f"{k} {data[k]} (params: {getattr(cfg, k)})" for k in CONFIG_FIELDS
             if k in data and data[k] != getattr(cfg, k)]
    if data.get("model_type", "t2v") != "t2v":
        wrong.append(f"model_type {data['model_type']} (only t2v is supported)")
    if wrong:
        raise CheckpointError(f"wan: {path} describes another model: {', '.join(wrong)}; set the "
                              f"backbone size params to match")


def base_state(folder: Path) -> dict[str, Tensor]:
    """Weights of a Wan2.1 folder (single or sharded safetensors)."""
    from safetensors.torch import load_file

    what = "a Wan2.1 folder with config.json and diffusion_pytorch_model.safetensors"
    single = folder / "diffusion_pytorch_model.safetensors"
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            if not (folder / shard).is_file():
                raise _missing(folder / shard, f"a shard listed in {index.name}", WAN_BASE_DOWNLOAD)
            state.update(load_file(str(folder / shard)))
        return state
    raise _missing(single, what, WAN_BASE_DOWNLOAD)


def _torch_load(path: Path, what: str, download: str) -> dict:
    """A checkpoint as a dict: safetensors by suffix, else ``files.torch_load`` (tensors and
    plain values only; a refusal never repeats torch's advice to disable that)."""
    if not path.is_file():
        raise _missing(path, what, download)
    data = read_state(path, what) if path.suffix == ".safetensors" else torch_load(path, what)
    if not isinstance(data, dict):
        raise CheckpointError(f"wan: {path}: expected {what} (a dict), got {type(data).__name__}")
    return data


def clean_key(key: str) -> str:
    for artifact in ARTIFACTS:
        key = key.replace(artifact, "")
    return key


def generator_state(path: Path, use_ema: bool, download: str) -> dict[str, Tensor]:
    """The DiT state dict of a generator checkpoint (``model.`` prefix removed)."""
    what = "a generator checkpoint with a 'generator' or 'generator_ema' entry"
    data = _torch_load(path, what, download)
    entry = "generator_ema" if use_ema else "generator"
    if entry not in data and "model" in data and not ({"generator", "generator_ema"} & set(data)):
        entry = "model"
    if entry not in data and data and all(torch.is_tensor(v) for v in data.values()):
        data = {entry: data}  # a bare state dict (safetensors), prefixed or not
    if entry not in data:
        other = "generator" if use_ema else "generator_ema"
        hint = f" (it has {other!r}: set use_ema: {str(not use_ema).lower()})" \
            if other in data else ""
        raise CheckpointError(
            f"wan: {path} has no {entry!r} entry{hint}; found a dict with entries "
            f"{sorted(map(str, data))[:8]}; expected the public .pt layout ('generator' / "
            f"'generator_ema' entries) or a state dict of the DiT (keys with or without "
            f"'model.')")
    state = {}
    for key, value in data[entry].items():
        key = clean_key(key)
        state[key.removeprefix("model.")] = value
    return state


def merge_lora(state: dict[str, Tensor], path: Path, rank: int, alpha: float,
               download: str) -> None:
    """Fold a peft LoRA into ``state`` in place: W += alpha / rank * B @ A (float32 math)."""
    what = "a LoRA checkpoint ('generator_lora' entry or peft state dict)"
    data = _torch_load(path, what, download)
    lora = data.get("generator_lora", data)
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in lora.items():
        key = clean_key(key).removeprefix("base_model.model.").removeprefix("model.")
        key = key.replace(".default.", ".")
        module, _, part = key.rpartition(".lora_")
        if part not in ("A.weight", "B.weight") or not torch.is_tensor(value):
            raise CheckpointError(f"wan: {path}: unexpected LoRA key {key!r} (expected "
                                  f"<module>.lora_A.weight / lora_B.weight)")
        pairs.setdefault(module, {})[part[0]] = value
    if not pairs:
        raise CheckpointError(f"wan: {path} holds no LoRA weights; expected {what}")
    for module, ab in sorted(pairs.items()):
        base = state.get(f"{module}.weight")
        if base is None or set(ab) != {"A", "B"}:
            raise CheckpointError(f"wan: {path}: LoRA for {module!r} has parts {sorted(ab)} and "
                                  f"the base {'has' if base is not None else 'lacks'} "
                                  f"{module}.weight")
        a, b = ab["A"].float(), ab["B"].float()  # [r, in], [out, r]
        if a.shape[0] != rank or (b.shape[0], a.shape[1]) != tuple(base.shape):
            raise CheckpointError(f"wan: {path}: LoRA {module} has A {list(a.shape)}, B "
                                  f"{list(b.shape)}; expected rank {rank} (params lora_rank) "
                                  f"over a weight {list(base.shape)}")
        state[f"{module}.weight"] = (base.float() + alpha / rank * (b @ a)).to(base.dtype)


def check_state(model: WanDiT, state: dict[str, Tensor], path: Path | None) -> None:
    """Every model parameter present with its shape, nothing left over; else one error."""
    problem = state_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(f"wan: {path} does not match the model ({problem}); check the "
                              f"backbone size params and that this is a Wan2.1-T2V generator")
