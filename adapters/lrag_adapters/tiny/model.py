"""A tiny block-causal video diffusion transformer (DiT) for the built-in default backbone.

Frames are patchified (p x p patches -> tokens), each token gets a learned spatial embedding, and
temporal positions enter through 1-D rotary embeddings (RoPE) on queries and keys, so positions
come from the engine's context plan. Every layer is an adaLN-modulated transformer block
conditioned per frame on the flow-matching timestep and an action vector (camera motion).
Queries of the current block attend to the planned context frames and to the whole block
(block-causal attention, as in Self-Forcing / CausVid).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


@dataclass
class TinyConfig:
    channels: int = 3
    height: int = 64
    width: int = 64
    patch: int = 8
    dim: int = 128
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    action_dim: int = 2
    rope_theta: float = 100.0

    @classmethod
    def from_params(cls, params) -> "TinyConfig":
        """The model sizes of a ``TinyParams``."""
        return cls(**{name: getattr(params, name) for name in cls.__dataclass_fields__
                      if hasattr(params, name)})

    @property
    def tokens_per_frame(self) -> int:
        return (self.height // self.patch) * (self.width // self.patch)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """Rotary tables for integer positions [...] -> cos, sin [..., head_dim / 2] (float32)."""
    freqs = theta ** (-torch.arange(0, head_dim, 2, device=positions.device) / head_dim)
    angles = positions.float()[..., None] * freqs
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs of ``x`` [..., Dh]; cos/sin broadcast to [..., Dh / 2]."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of timesteps t [...] in [0, 1000] -> [..., dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = t.float()[..., None] * freqs
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        d, hidden = cfg.dim, int(cfg.dim * cfg.mlp_ratio)
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm_q = nn.RMSNorm(cfg.head_dim, eps=1e-6)
        self.norm_k = nn.RMSNorm(cfg.head_dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, d))
        self.modulation = nn.Linear(d, 6 * d)  # default init: random weights use the context

    def forward(self, x: Tensor, cond: Tensor, rope: tuple[Tensor, Tensor], ctx_k: Tensor | None,
                ctx_v: Tensor | None, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, F, N, D]; cond [B, F, D]; ctx_k/v [B, Hh, M, Dh] (roped K); mask [B, 1, 1, M+F*N].

        Returns the new x and this block's un-roped K and V [B, F, N, Hh, Dh].
        """
        shift1, scale1, gate1, shift2, scale2, gate2 = (
            self.modulation(F.silu(cond))[:, :, None].chunk(6, dim=-1))  # each [B, F, 1, D]
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = rearrange(self.qkv(h), "b f n (three h d) -> three b f n h d", three=3,
                            h=self.heads)
        q, k = self.norm_q(q), self.norm_k(k)
        cos, sin = rope  # [B, F, 1, 1, Dh/2]
        q_roped = rearrange(apply_rope(q, cos, sin), "b f n h d -> b h (f n) d")
        k_roped = rearrange(apply_rope(k, cos, sin), "b f n h d -> b h (f n) d")
        v_flat = rearrange(v, "b f n h d -> b h (f n) d")
        if ctx_k is not None:
            k_roped = torch.cat((ctx_k, k_roped), dim=2)
            v_flat = torch.cat((ctx_v, v_flat), dim=2)
        attn = F.scaled_dot_product_attention(q_roped, k_roped, v_flat, attn_mask=mask)
        attn = rearrange(attn, "b h (f n) d -> b f n (h d)", f=x.shape[1])
        x = x + gate1 * self.proj(attn)
        h = self.norm2(x) * (1 + scale2) + shift2
        x = x + gate2 * self.mlp(h)
        return x, k, v


class TinyDiT(nn.Module):
    """Predicts the flow-matching velocity of a block of frames given a context of K/V."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        if cfg.height % cfg.patch or cfg.width % cfg.patch or cfg.dim % cfg.heads:
            raise ValueError(f"tiny backbone: frame {cfg.height}x{cfg.width} must be divisible by "
                             f"patch {cfg.patch} and dim {cfg.dim} by heads {cfg.heads}")
        self.cfg = cfg
        patch_dim = cfg.channels * cfg.patch ** 2
        self.patch_embed = nn.Linear(patch_dim, cfg.dim)
        self.pos_embed = nn.Parameter(torch.randn(cfg.tokens_per_frame, cfg.dim) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.SiLU(),
                                      nn.Linear(cfg.dim, cfg.dim))
        self.action_mlp = nn.Sequential(nn.Linear(cfg.action_dim, cfg.dim), nn.SiLU(),
                                        nn.Linear(cfg.dim, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm_out = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.head = nn.Linear(cfg.dim, patch_dim)
        nn.init.zeros_(self.modulation_out.weight)
        nn.init.zeros_(self.modulation_out.bias)

    def rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions [B, F] -> cos, sin [B, F, 1, 1, Dh/2] for tokens laid out [B, F, N, Hh, Dh]."""
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        return cos[:, :, None, None], sin[:, :, None, None]

    def embed(self, x: Tensor, t: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Patch tokens + spatial embedding [B, F, N, D] and per-frame conditioning [B, F, D]."""
        p = self.cfg.patch
        tokens = rearrange(x, "b f c (h p1) (w p2) -> b f (h w) (c p1 p2)", p1=p, p2=p)
        cond = self.time_mlp(timestep_embedding(t, self.cfg.dim).to(x.dtype)) + \
            self.action_mlp(actions)
        return self.patch_embed(tokens) + self.pos_embed, cond

    def unpatchify(self, h: Tensor, cond: Tensor) -> Tensor:
        """Final modulated norm + linear head, tokens [B, F, N, D] -> frames [B, F, C, H, W]."""
        p = self.cfg.patch
        shift, scale = self.modulation_out(F.silu(cond))[:, :, None].chunk(2, dim=-1)
        out = self.head(self.norm_out(h) * (1 + scale) + shift)
        return rearrange(out, "b f (h w) (c p1 p2) -> b f c (h p1) (w p2)", p1=p, p2=p,
                         h=self.cfg.height // p)

    def forward(self, x: Tensor, t: Tensor, actions: Tensor, positions: Tensor,
                ctx: list[tuple[Tensor, Tensor]] | None, mask: Tensor | None,
                return_kv: bool = False) -> Tensor:
        """x [B, F, C, H, W]; t [B, F]; actions [B, F, A]; positions [B, F].

        ``ctx``: per layer (K roped, V) [B, Hh, M, Dh]. Returns the velocity [B, F, C, H, W], or
        with ``return_kv`` the K/V of these frames [L, 2, B, F, N, Hh, Dh] (K un-roped).
        """
        h, cond = self.embed(x, t, actions)  # [B, F, N, D], [B, F, D]
        rope = self.rope(positions)
        kvs = []
        for i, block in enumerate(self.blocks):
            ck, cv = ctx[i] if ctx is not None else (None, None)
            h, k, v = block(h, cond, rope, ck, cv, mask)
            if return_kv:
                kvs.append(torch.stack((k, v)))
        if return_kv:
            return torch.stack(kvs)  # [L, 2, B, F, N, Hh, Dh]
        return self.unpatchify(h, cond)

    def forward_sequence(self, x: Tensor, t: Tensor, actions: Tensor, positions: Tensor,
                         frame_mask: Tensor) -> Tensor:
        """Training forward over a whole sequence with a frame-level attention mask.

        x [B, S, C, H, W]; t [B, S]; actions [B, S, A]; positions [B, S]; frame_mask [S, S] bool
        (query frame, key frame). Returns the velocity [B, S, C, H, W].
        """
        n = self.cfg.tokens_per_frame
        mask = frame_mask.repeat_interleave(n, 0).repeat_interleave(n, 1)  # [S*N, S*N]
        h, cond = self.embed(x, t, actions)
        rope = self.rope(positions)
        for block in self.blocks:
            h, _, _ = block(h, cond, rope, None, None, mask)
        return self.unpatchify(h, cond)
