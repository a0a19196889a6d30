"""``example_patch``: a 2-layer patch transformer written against the Backbone contract alone.

Frames are 16x16 RGB latents (pixels), cut into 4x4 patches: N = 16 tokens per frame. Each layer
attends from the block's tokens to ``[context tokens | the block's own tokens]``; time enters
as a rotary embedding of each frame's temporal position (the engine's slots), applied to K when
the context is prepared (K is stored un-roped, as the contract fixes) and to Q / the block's own
K at use. The model predicts the clean block (x0); the sampler re-noises towards ``t_next``:
``x_next = (1 - t_next) x0 + t_next noise``, so the last step (``t_next = 0``) returns x0.
Untrained: it generates noise-like frames, but keeps every rule the engine relies on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrag_framework.interfaces import Backbone, BackboneSpec, Conditioning, Context

C, H, W, P = 3, 16, 16, 4  # latent channels, height, width, patch size
N = (H // P) * (W // P)  # tokens per frame


def rope(x: Tensor, pos: Tensor) -> Tensor:
    """Rotate pairs of the last dim of ``x`` [..., F, N, Hh, Dh] by temporal positions [..., F]."""
    half = x.shape[-1] // 2
    freq = 1.0 / 100.0 ** (torch.arange(half, device=x.device) / half)  # [Dh/2]
    angle = pos.to(x.device, torch.float32)[..., None, None, None] * freq  # [..., F, 1, 1, Dh/2]
    a, b = x[..., :half], x[..., half:]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class Layer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h: Tensor, pos: Tensor, ctx: tuple[Tensor, Tensor, Tensor] | None
                ) -> tuple[Tensor, Tensor]:
        """``h`` [B, F, N, dim] at positions [B, F]; ``ctx`` = (K roped, V, valid) of the
        context, [B, M, Hh, Dh] x2 and [B, M]. Returns the new h and this block's K/V
        [2, B, F, N, Hh, Dh] (K un-roped)."""
        b, f, n, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, f, n, 3, self.heads, -1).unbind(3)
        kv = torch.stack([k, v])  # [2, B, F, N, Hh, Dh]
        q, k = rope(q, pos).flatten(1, 2), rope(k, pos).flatten(1, 2)  # [B, F*N, Hh, Dh]
        v = v.flatten(1, 2)
        mask = None
        if ctx is not None:
            ck, cv, valid = ctx
            k, v = torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1)
            own = torch.ones(b, f * n, dtype=torch.bool, device=h.device)
            mask = torch.cat([valid, own], dim=1)[:, None, None]  # [B, 1, 1, M + F*N]
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2), attn_mask=mask)
        h = h + self.out(att.transpose(1, 2).reshape(b, f, n, d))  # [B, F, N, dim]
        return h + self.mlp(self.norm2(h)), kv


class PatchModel(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int):
        super().__init__()
        self.embed, self.unembed = nn.Linear(C * P * P, dim), nn.Linear(dim, C * P * P)
        self.where = nn.Parameter(torch.randn(N, dim) * 0.02)  # spatial position of a token
        self.time = nn.Linear(1, dim)
        self.layers = nn.ModuleList(Layer(dim, heads) for _ in range(layers))

    def forward(self, x: Tensor, t: Tensor, pos: Tensor, ctx: list | None
                ) -> tuple[Tensor, Tensor]:
        """x [B, F, C, H, W] at noise level t [B] -> (x0 [B, F, C, H, W],
        K/V [L, 2, B, F, N, Hh, Dh])."""
        b, f = x.shape[:2]
        tokens = x.reshape(b, f, C, H // P, P, W // P, P).permute(0, 1, 3, 5, 2, 4, 6)
        h = self.embed(tokens.reshape(b, f, N, C * P * P)) + self.where  # [B, F, N, dim]
        h = h + self.time(t.to(h.dtype)[:, None])[:, None, None]
        kvs = []
        for i, layer in enumerate(self.layers):
            h, kv = layer(h, pos, None if ctx is None else ctx[i])
            kvs.append(kv)
        out = self.unembed(h).view(b, f, H // P, W // P, C, P, P).permute(0, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, f, C, H, W), torch.stack(kvs)


class NoConditioning(Conditioning):
    """Unconditional generation: nothing changes over time."""


@dataclass
class Prepared:
    ctx: list[tuple[Tensor, Tensor, Tensor]] | None  # per layer (K roped, V, valid)
    block_positions: Tensor  # [B, Fb]


class PatchBackbone(Backbone):
    def __init__(self, params):
        with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG untouched
            torch.manual_seed(params.init_seed)
            self.model = PatchModel(params.dim, params.heads, params.layers).eval()
        self.model.requires_grad_(False)
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.spec = BackboneSpec(latent_shape=(C, H, W), tokens_per_frame=N, frames_per_block=2,
                                 num_layers=params.layers, num_heads=params.heads,
                                 head_dim=params.dim // params.heads, kv_dtype=self.dtype,
                                 window=params.window, sink=1)

    def to(self, device, dtype=None):
        self.device, self.dtype = torch.device(device), dtype or self.dtype
        self.model.to(self.device, self.dtype)
        self.spec = BackboneSpec(**{**self.spec.__dict__, "kv_dtype": self.dtype})
        return self

    def encode_conditioning(self, items, num_frames):
        return NoConditioning()

    def timesteps(self) -> Tensor:
        return torch.tensor([1.0, 0.75, 0.5, 0.25])

    def sampler_step(self, x, prediction, t, t_next, noise):
        return (1 - t_next) * prediction + t_next * noise.to(prediction)

    def prepare(self, context: Context) -> Prepared:
        pos = context.block_positions.to(self.device)
        if context.frame_ids.shape[1] == 0:
            return Prepared(None, pos)
        kv = context.kv.to(self.device, self.dtype)  # [L, 2, B, F, N, Hh, Dh]
        k = rope(kv[:, 0], context.positions.to(self.device)[None])  # roped once per block
        valid = context.valid.to(self.device).repeat_interleave(N, dim=1)  # [B, F*N]
        ctx = [(k[i].flatten(1, 2), kv[i, 1].flatten(1, 2), valid) for i in range(len(kv))]
        return Prepared(ctx, pos)

    @torch.no_grad()
    def denoise(self, x, t, cond, prepared):
        return self.model(x.to(self.device, self.dtype), t, prepared.block_positions,
                          prepared.ctx)[0]

    @torch.no_grad()
    def recache(self, clean, cond, prepared):
        t = torch.zeros(clean.shape[0], device=self.device)
        return self.model(clean.to(self.device, self.dtype), t, prepared.block_positions,
                          prepared.ctx)[1]
