"""Where the evaluation weights are: a folder named in the eval config, else the standard cache
folders (the Hugging Face hub cache for the transformers models; VBench's and LAION's cache folders
for the aesthetic head). Nothing is ever downloaded: a missing file raises ``MissingWeights``
with one line saying which file to put where."""
from __future__ import annotations

import os
from pathlib import Path

# Public Hugging Face repositories whose layout each model folder has.
HF_REPOS = {"dino": "facebook/dino-vitb16", "dinov2": "facebook/dinov2-base",
            "clip_b32": "openai/clip-vit-base-patch32", "clip_l14": "openai/clip-vit-large-patch14"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
AESTHETIC_FILE = "sa_0_4_vit_l_14_linear.pth"  # LAION-AI/aesthetic-predictor


class MissingWeights(FileNotFoundError):
    """A weight file the metric needs is not on disk (the message says what to put where)."""


def _weight_file(folder: Path) -> Path | None:
    return next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it (read at each call):
    HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub or ~/.cache/..."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def _hub_snapshot(repo: str) -> Path | None:
    """The cached snapshot folder of ``repo`` (its ``main`` revision), if any."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, "config.json", cache_dir=hub_cache_dir())
    return Path(found).parent if isinstance(found, str) else None


def model_folder(key: str, configured: str | None) -> Path:
    """The folder (config.json + model.safetensors or pytorch_model.bin) of model ``key``."""
    repo = HF_REPOS[key]
    folder = Path(configured).expanduser() if configured else _hub_snapshot(repo)
    if folder is not None and (folder / "config.json").is_file() and _weight_file(folder):
        return folder
    files = "config.json + model.safetensors (or pytorch_model.bin)"
    where = (f"into {folder}" if configured else
             f"into the Hugging Face cache (`hf download {repo} config.json model.safetensors`, "
             f"or pytorch_model.bin where the repository has no safetensors) or into a folder "
             f"named by weights.{key}")
    raise MissingWeights(f"needs {repo} ({files}): put them {where}")


def model_files(folder: Path) -> list[Path]:
    """The files that decide a model's output (for cache fingerprints)."""
    return [folder / "config.json", _weight_file(folder)]


def aesthetic_candidates() -> list[Path]:
    vbench = Path(os.environ.get("VBENCH_CACHE_DIR") or "~/.cache/vbench").expanduser()
    return [vbench / "aesthetic_model" / "emb_reader" / AESTHETIC_FILE,
            Path("~/.cache/emb_reader").expanduser() / AESTHETIC_FILE]


def aesthetic_head_file(configured: str | None) -> Path:
    """The LAION linear head: the configured file, else VBench's or LAION's cache location."""
    candidates = [Path(configured).expanduser()] if configured else aesthetic_candidates()
    for path in candidates:
        if path.is_file():
            return path
    where = candidates[0] if configured else " or ".join(str(p) for p in candidates)
    raise MissingWeights(f"needs the LAION aesthetic head {AESTHETIC_FILE} (from "
                         f"LAION-AI/aesthetic-predictor): put it at {where} or name it in "
                         f"weights.aesthetic_head")
