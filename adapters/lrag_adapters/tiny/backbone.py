"""The tiny default backbone behind the Backbone contract: actions as per-frame conditioning,
flow matching with a few-step sampler, pixels as latents (encode/decode are the identity)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from lrag_framework.interfaces import Backbone, BackboneSpec, Conditioning, Context, Reference

from .model import TinyConfig, TinyDiT, apply_rope
from .params import TinyParams
from .sampling import sampler_step, sigmas


# Shipped weights, trained on the procedural world (docs/results.md): ``builtin`` the default
# (fine-tuned on planned context with three-block rollouts of its own), ``builtin-planned`` the
# previous default (planned context, one-block rollouts), ``builtin-contiguous`` the generator
# trained on contiguous windows only (teacher forcing), the one the paper's method assumes.
BUILTIN_WEIGHTS = {"builtin": "tiny_world.safetensors",
                   "builtin-planned": "tiny_world_planned.safetensors",
                   "builtin-contiguous": "tiny_world_contiguous.safetensors"}


@dataclass
class ActionConditioning(Conditioning):
    """Per-frame action vectors of every stream: [B, T, A]; their signals: the camera position
    the actions integrate to, in frame widths from the first frame: [B, T, A] on CPU."""

    actions: Tensor
    positions: Tensor

    def window(self, start: int, stop: int) -> Tensor:
        return self.actions[:, start:stop]

    def frame_signals(self, frames: Tensor) -> Tensor:
        return self.positions[:, frames]


@dataclass
class Prepared:
    ctx: list[tuple[Tensor, Tensor]] | None  # per layer (K roped, V) [B, Hh, M, Dh]
    mask: Tensor | None  # [B, 1, 1, M + Fb * N] bool, None when every key is valid
    block_start: int
    block_positions: Tensor  # [B, Fb]


class TinyBackbone(Backbone):
    def __init__(self, params: TinyParams):
        self.params = params
        self.cfg = TinyConfig.from_params(params)
        with torch.random.fork_rng(devices=[]):  # the init draws leave the global RNG untouched
            torch.manual_seed(params.init_seed)
            self.model = TinyDiT(self.cfg).eval().requires_grad_(False)
        if params.weights:
            load_weights(self.model, params.weights)
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.spec = BackboneSpec(
            latent_shape=(params.channels, params.height, params.width),
            tokens_per_frame=self.cfg.tokens_per_frame, frames_per_block=params.frames_per_block,
            num_layers=params.layers, num_heads=params.heads, head_dim=self.cfg.head_dim,
            kv_dtype=self.dtype, window=params.window, sink=params.sink)

    def to(self, device, dtype=None):
        self.device = torch.device(device)
        self.dtype = dtype or self.dtype
        self.model.to(self.device, self.dtype)
        self.spec = BackboneSpec(**{**self.spec.__dict__, "kv_dtype": self.dtype})
        return self

    def encode_conditioning(self, items: list[Any], num_frames: int) -> ActionConditioning:
        """Each item: None (no motion), an array-like [T, A], a path to a .npy file, or a camera
        path in the procedural world: ``{world: SEED, path: revisit | walk}``."""
        from lrag_adapters.world import ACTION_SCALE

        actions = torch.stack([self._actions(item, num_frames) for item in items])  # [B, T, A]
        positions = actions.double().cumsum(1) * (ACTION_SCALE / self.params.width)
        return ActionConditioning(actions.to(self.device, self.dtype), positions.float())

    def reference(self, item: Any, num_frames: int) -> Reference | None:
        """The world's ground-truth frames and same-place matrix for a world camera path."""
        if not isinstance(item, dict):
            return None
        from lrag_adapters.world import SAME_PLACE_OVERLAP, overlap_matrix

        frames, _, truths = _world_clip(item, num_frames)
        pixels = torch.from_numpy(frames)
        same = torch.from_numpy(overlap_matrix(truths, truths) >= SAME_PLACE_OVERLAP)
        return Reference(pixels=pixels, latents=pixels, same_place=same)

    def _actions(self, item: Any, num_frames: int) -> Tensor:
        a = self.cfg.action_dim
        if item is None:
            return torch.zeros(num_frames, a)
        if isinstance(item, dict):
            item = _world_clip(item, num_frames)[1]
        if isinstance(item, (str, Path)):
            if not Path(item).is_file():
                raise ValueError(f"tiny backbone: a text conditioning is a path to a .npy file "
                                 f"of actions [T, {a}], and {str(item)!r} is no file (the tiny "
                                 f"backbone takes no text prompts: --prompt needs a Wan backbone)")
            item = np.load(item)
        actions = torch.as_tensor(np.asarray(item, dtype=np.float32))
        if actions.ndim != 2 or actions.shape[1] != a or actions.shape[0] < num_frames:
            raise ValueError(f"tiny backbone: actions must be [T >= {num_frames}, {a}], "
                             f"got {list(actions.shape)}")
        return actions[:num_frames]

    def timesteps(self) -> Tensor:
        return sigmas(self.params) * 1000

    def sampler_step(self, x, prediction, t, t_next, noise):
        return sampler_step(x, prediction, t / 1000, t_next / 1000, noise, self.params.sampler)

    def prepare(self, context: Context) -> Prepared:
        b, n = context.valid.shape[0], self.cfg.tokens_per_frame
        fb = context.block_positions.shape[1]
        ctx = None
        mask = None
        if context.frame_ids.shape[1]:
            kv = context.kv.to(self.device, self.dtype)
            cos, sin = self.model.rope(context.positions.to(self.device))
            k = rearrange(apply_rope(kv[:, 0], cos, sin), "l b f n h d -> l b h (f n) d")
            v = rearrange(kv[:, 1], "l b f n h d -> l b h (f n) d")
            ctx = list(zip(k.unbind(0), v.unbind(0)))
            if not bool(context.valid.all()):
                keys = torch.cat((context.valid.repeat_interleave(n, dim=1),
                                  torch.ones(b, fb * n, dtype=torch.bool)), dim=1)
                mask = keys[:, None, None].to(self.device)
        return Prepared(ctx, mask, context.block_start, context.block_positions.to(self.device))

    def _forward(self, x: Tensor, t: Tensor, cond: ActionConditioning, prepared: Prepared,
                 return_kv: bool) -> Tensor:
        f = x.shape[1]
        actions = cond.window(prepared.block_start, prepared.block_start + f)
        t_frames = t.to(self.device, self.dtype)[:, None].expand(-1, f)
        return self.model(x.to(self.device, self.dtype), t_frames, actions,
                          prepared.block_positions, prepared.ctx, prepared.mask, return_kv)

    @torch.no_grad()
    def denoise(self, x, t, cond, prepared):
        return self._forward(x, t, cond, prepared, return_kv=False)

    @torch.no_grad()
    def recache(self, clean, cond, prepared):
        t = torch.zeros(clean.shape[0], device=self.device)
        return self._forward(clean, t, cond, prepared, return_kv=True)


def _world_clip(item: dict, num_frames: int):
    """Render ``{world: seed, path: revisit | walk}`` -> (frames, actions, truths)."""
    from lrag_adapters.world import make_clip

    unknown = set(item) - {"world", "path"}
    if "world" not in item or unknown:
        raise ValueError(f"tiny backbone: a world conditioning is {{world: SEED, path: revisit|"
                         f"walk}}, got {item}")
    return make_clip(int(item["world"]), num_frames, item.get("path", "revisit"))


def load_weights(model: TinyDiT, path: str) -> None:
    """Load TinyDiT weights from safetensors (a name of ``BUILTIN_WEIGHTS``: shipped), reporting
    missing and unexpected keys and a size mismatch with the file's recorded params."""
    from importlib import resources

    from lrag_framework.files import read_metadata, read_tensors

    if path in BUILTIN_WEIGHTS:
        path = str(resources.files("lrag_adapters.tiny").joinpath(BUILTIN_WEIGHTS[path]))
    if not Path(path).is_file():
        raise FileNotFoundError(f"tiny backbone: weights file {path} not found")
    what = "TinyDiT weights (safetensors)"
    recorded = read_metadata(path, what).get("params") or {}  # a broken file: CheckpointError
    sizes = {k: v for k, v in recorded.items() if k in model.cfg.__dataclass_fields__}
    wrong = {k: (v, getattr(model.cfg, k)) for k, v in sizes.items() if getattr(model.cfg, k) != v}
    if wrong:
        raise ValueError(f"tiny backbone: {path} was trained with other sizes "
                         f"(file, params): {wrong}")
    state = read_tensors(path, what=what)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"tiny backbone: {path} does not match the model: missing keys "
                         f"{missing}, unexpected keys {unexpected}")
