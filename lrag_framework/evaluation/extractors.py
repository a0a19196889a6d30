"""Image feature extractors for the VBench metrics, through ``transformers`` (no torchvision),
from local folders in the public Hugging Face layouts, with VBench's preprocessing.

Preprocessing (``vbench/utils.py`` and ``vbench2_beta_long/utils.py`` of Vchitect/VBench, the
torchvision transforms written out on float tensors in [0, 255]):
- ``dino`` (subject consistency, DINO ViT-B/16): resize the short side to 224 (bilinear, no
  antialias), no crop, /255, ImageNet mean/std; the CLS token after the final norm.
- ``dinov2`` (VBench-Long clip-to-clip subject consistency, DINOv2 ViT-B/14): resize the short
  side to 256 (bicubic, antialias), centre crop 224, /255, ImageNet mean/std; CLS after the norm.
- ``clip_b32`` / ``clip_l14`` (background consistency / aesthetic quality): resize the short side
  to 224 (bicubic, no antialias), centre crop 224, /255, CLIP mean/std; the projected image
  embedding (``encode_image`` of OpenAI CLIP).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .weights import HF_REPOS, model_files

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclass(frozen=True)
class Preprocess:
    short: int  # short side after resizing
    mode: str  # "bilinear" | "bicubic"
    antialias: bool
    crop: int | None  # centre crop (square) after resizing
    mean_std: tuple

    def __call__(self, frames: Tensor) -> Tensor:
        """Frames [B, 3, H, W] float in [0, 255] -> normalised model input [B, 3, h, w]."""
        h, w = frames.shape[-2:]
        # torchvision's Resize(int): the short side to ``short``, the long side truncated
        if w <= h:
            size = (int(self.short * h / w), self.short)
        else:
            size = (self.short, int(self.short * w / h))
        x = F.interpolate(frames, size=size, mode=self.mode, align_corners=False,
                          antialias=self.antialias)
        if self.crop:
            top = int(round((size[0] - self.crop) / 2.0))
            left = int(round((size[1] - self.crop) / 2.0))
            x = x[..., top:top + self.crop, left:left + self.crop]
        mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device)[:, None, None]
                     for v in self.mean_std)
        return (x / 255.0 - mean) / std


PREPROCESS = {
    "dino": Preprocess(224, "bilinear", False, None, IMAGENET),
    "dinov2": Preprocess(256, "bicubic", True, 224, IMAGENET),
    "clip_b32": Preprocess(224, "bicubic", False, 224, CLIP),
    "clip_l14": Preprocess(224, "bicubic", False, 224, CLIP),
}


def _config(key: str, folder: Path):
    """The model config of a public folder; a CLIP folder holds text and vision towers, and the
    projection size is the top-level ``projection_dim``."""
    import transformers

    data = json.loads((folder / "config.json").read_text())
    if key.startswith("clip"):
        if data.get("model_type") == "clip":
            vision = dict(data.get("vision_config") or {})
            vision["projection_dim"] = data.get("projection_dim", vision.get("projection_dim"))
            data = {k: v for k, v in vision.items() if v is not None}
        return transformers.CLIPVisionConfig.from_dict(data)
    cls = transformers.ViTConfig if key == "dino" else transformers.Dinov2Config
    return cls.from_dict(data)


def _state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


KEEP = {"dino": ("embeddings.", "encoder.", "layernorm."),  # not the pooler or a classifier
        "dinov2": ("embeddings.", "encoder.", "layernorm."),
        "clip_b32": ("vision_model.", "visual_projection."),  # not the text tower
        "clip_l14": ("vision_model.", "visual_projection.")}


def build_model(key: str, folder: Path) -> torch.nn.Module:
    """The vision model of ``key`` with the folder's weights (float32, eval mode). The keys of
    other heads and of CLIP's text tower are left out; transformers maps the public key layout
    onto its modules; a missing or mismatched key is an error, never a random weight."""
    import transformers

    cls = {"dino": transformers.ViTModel, "dinov2": transformers.Dinov2Model}.get(
        key, transformers.CLIPVisionModelWithProjection)
    weights = model_files(folder)[1]
    state = _state_dict(weights)
    base = {"dino": "vit.", "dinov2": "dinov2."}.get(key)
    if base and any(k.startswith(base) for k in state):  # saved from a model with a head
        state = {k.removeprefix(base): v for k, v in state.items() if k.startswith(base)}
    state = {k: v for k, v in state.items() if k.startswith(KEEP[key])}
    extra = {"add_pooling_layer": False} if key == "dino" else {}
    what = f"{weights}: not a {HF_REPOS[key]} checkpoint for its config.json"
    try:
        model, info = cls.from_pretrained(
            None, config=_config(key, folder), state_dict=state, local_files_only=True,
            weights_only=True, output_loading_info=True, **extra)
    except RuntimeError as err:  # size mismatches
        raise ValueError(f"{what}: {str(err).splitlines()[0]}") from None
    bad = {k: sorted(map(str, v))[:5] for k, v in info.items()
           if k in ("missing_keys", "mismatched_keys") and v}
    if bad:
        raise ValueError(f"{what}: {bad}")
    return model.float().eval().requires_grad_(False)


class Extractor:
    """Frames [B, 3, H, W] float in [0, 255] -> features [B, D] (float32, not normalised)."""

    def __init__(self, key: str, folder: str | Path, device: torch.device):
        self.key, self.folder, self.device = key, Path(folder), device
        self.files = model_files(self.folder)
        self.preprocess = PREPROCESS[key]
        self.model = build_model(key, self.folder).to(device)

    @torch.inference_mode()
    def __call__(self, frames: Tensor) -> Tensor:
        x = self.preprocess(frames.to(self.device, torch.float32))
        if self.key == "dino":  # DINO's forward: the CLS token after the final norm
            out = self.model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0]
        elif self.key == "dinov2":
            out = self.model(pixel_values=x).pooler_output
        else:
            out = self.model(pixel_values=x).image_embeds
        return out.float().cpu()


def load_aesthetic_head(path: Path) -> torch.nn.Linear:
    """The LAION aesthetic predictor: ``nn.Linear(768, 1)`` on L2-normalised CLIP ViT-L/14
    image embeddings (keys ``weight`` [1, D], ``bias`` [1]); .pth (weights_only) or safetensors."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if set(state) != {"weight", "bias"} or state["weight"].ndim != 2 \
            or state["weight"].shape[0] != 1:
        shapes = {k: list(v.shape) for k, v in state.items()}
        raise ValueError(f"{path}: expected a linear head {{weight: [1, D], bias: [1]}}, "
                         f"got {shapes}")
    head = torch.nn.Linear(state["weight"].shape[1], 1)
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head.eval().requires_grad_(False)
