"""The Wan2.1 text-to-video diffusion transformer (DiT), run block-causally over a planned context.

Architecture and parameter names follow Wan2.1 ``wan/modules/model.py`` (``WanModel``) and its
causal variant in Self-Forcing ``wan/modules/causal_model.py`` (``CausalWanModel``, used by
Self-Forcing, Causal-Forcing, CausVid, LongLive and LongLive-RAG), so the public state dicts load
as they are:
``patch_embedding``, ``text_embedding.{0,2}``, ``time_embedding.{0,2}``, ``time_projection.1``,
``blocks.N.{self_attn,cross_attn}.{q,k,v,o,norm_q,norm_k}``, ``blocks.N.norm3``,
``blocks.N.ffn.{0,2}``, ``blocks.N.modulation``, ``head.head``, ``head.modulation``.

Per-frame timesteps as in the causal variant (one adaLN modulation per frame). Precision: matmuls
in the compute dtype; the time embedding, the modulations and the affine cross-attention norm stay
float32 (as diffusers keeps them) and the residual stream is float32, as in Wan2.1's own forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .rope import apply_rope

FP32_PARAMS = ("time_embedding.", "time_projection.", "modulation", "norm3.")


@dataclass(frozen=True)
class WanConfig:
    """Sizes of the DiT; defaults are Wan2.1-T2V-1.3B at 480x832 (latents 16x60x104)."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    patch: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    height: int = 60  # latent frame height
    width: int = 104

    def __post_init__(self):
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"wan: dim {self.dim} must split into {self.num_heads} heads of even "
                             f"size")
        if self.patch[0] != 1:
            raise ValueError(f"wan: a frame-causal model needs temporal patch 1, got {self.patch}")
        if self.height % self.patch[1] or self.width % self.patch[2]:
            raise ValueError(f"wan: latent {self.height}x{self.width} is not divisible by the "
                             f"patch {self.patch[1:]}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def grid(self) -> tuple[int, int]:
        return self.height // self.patch[1], self.width // self.patch[2]

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]


def sinusoidal(t: Tensor, dim: int) -> Tensor:
    """Wan's timestep embedding [...] -> [..., dim]: cat(cos, sin), computed in float64."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.double()[..., None] * freqs
    return torch.cat((angles.cos(), angles.sin()), dim=-1).float()


@torch.library.custom_op("lrag_wan::linear_gelu", mutates_args=())
def linear_gelu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """tanh-GELU(x W^T + b) for x [..., D]. On CUDA one cuBLASLt GEMM that adds the bias and
    applies the GELU in its epilogue, on the float32 accumulator (a custom op, so inductor keeps
    it whole instead of splitting it into a GEMM and a pointwise kernel that re-reads the
    FFN-wide activation); elsewhere the plain ops."""
    x2 = x.reshape(-1, x.shape[-1])
    if x.is_cuda:
        y = torch._addmm_activation(bias, x2, weight.t(), use_gelu=True)
    else:
        y = F.gelu(F.linear(x2, weight, bias), approximate="tanh")
    return y.view(*x.shape[:-1], weight.shape[0])


@linear_gelu.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def layer_norm(x: Tensor, eps: float) -> Tensor:
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps)


class RMSNorm(nn.Module):
    """Wan's RMS norm over the whole model dim (before the split into heads)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype) * self.weight


class Attention(nn.Module):
    """Projections of a Wan attention layer (self- or text cross-attention), q/k RMS-normed."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.heads = cfg.num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q = RMSNorm(d, cfg.eps)
        self.norm_k = RMSNorm(d, cfg.eps)

    def queries(self, h: Tensor) -> Tensor:
        return self.norm_q(self.q(h)).unflatten(-1, (self.heads, -1))  # [..., Hh, Dh]

    def keys_values(self, h: Tensor) -> tuple[Tensor, Tensor]:
        k = self.norm_k(self.k(h)).unflatten(-1, (self.heads, -1))
        return k, self.v(h).unflatten(-1, (self.heads, -1))


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """SDPA over token layouts: q [B, Q, Hh, Dh], k/v [B, S, Hh, Dh] -> [B, Q, Hh, Dh]."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask)
    return out.transpose(1, 2)


class Block(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = Attention(cfg)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = Attention(cfg)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim ** 0.5)
        self.compiled: tuple | None = None  # (pre, post) set by WanDiT.compile_layers
        self.fused_gelu = False  # set by WanDiT.fuse_ffn_epilogue

    def _modulated(self, x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        return (layer_norm(x, self.eps) * (1 + scale) + shift).to(self.ffn[0].weight.dtype)

    def _mod(self, e: Tensor) -> tuple[Tensor, ...]:
        """e [B, F, 6, D] -> shift1, scale1, gate1, shift2, scale2, gate2, each [B, F, 1, D]."""
        return (self.modulation.unsqueeze(1) + e).chunk(6, dim=2)

    def keys_values(self, x: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        """Un-roped self-attention K and V [B, F, N, Hh, Dh] of tokens x [B, F, N, D]."""
        shift, scale = self._mod(e)[:2]
        return self.self_attn.keys_values(self._modulated(x, shift, scale))

    def cross(self, x: Tensor, cross_k: Tensor, cross_v: Tensor) -> Tensor:
        """Text cross-attention; cross K/V [B, Lt, Hh, Dh] (per stream) or [B, F, Lt, Hh, Dh]."""
        b, f, n, d = x.shape
        q = self.cross_attn.queries(self.norm3(x).to(self.ffn[0].weight.dtype))
        if cross_k.ndim == 4:
            y = attend(q.flatten(1, 2), cross_k, cross_v)  # [B, F*N, Hh, Dh]
        else:
            y = attend(q.flatten(0, 1), cross_k.flatten(0, 1), cross_v.flatten(0, 1))
        return self.cross_attn.o(y.reshape(b, f, n, d))

    def pre_attention(self, x: Tensor, e: Tensor, cos: Tensor, sin: Tensor
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Self-attention inputs of tokens x [B, F, N, D]: roped q and k [B, F*N, Hh, Dh], and
        the un-roped K and V [B, F, N, Hh, Dh] that the cache keeps."""
        shift, scale = self._mod(e)[:2]
        h = self._modulated(x, shift, scale)
        q = self.self_attn.queries(h)
        k, v = self.self_attn.keys_values(h)
        return apply_rope(q, cos, sin).flatten(1, 2), apply_rope(k, cos, sin).flatten(1, 2), k, v

    def post_attention(self, x: Tensor, y: Tensor, e: Tensor, cross_k: Tensor,
                       cross_v: Tensor) -> Tensor:
        """Residual updates after self-attention output y [B, F*N, Hh, Dh]: output projection,
        text cross-attention and FFN, each gated as Wan does."""
        _, _, gate1, shift2, scale2, gate2 = self._mod(e)
        x = x + self.self_attn.o(y.reshape(x.shape)).float() * gate1
        x = x + self.cross(x, cross_k, cross_v).float()
        h = self._modulated(x, shift2, scale2)
        up = self.ffn[0]
        h = linear_gelu(h, up.weight, up.bias) if self.fused_gelu else self.ffn[1](up(h))
        return x + self.ffn[2](h).float() * gate2

    def forward(self, x: Tensor, e: Tensor, rope: tuple[Tensor, Tensor], k_buf: Tensor,
                v_buf: Tensor, mask: Tensor | None, cross_k: Tensor,
                cross_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, F, N, D] float32; e [B, F, 6, D]; rope tables of the block's frames.

        ``k_buf``/``v_buf`` [B, S, Hh, Dh]: the roped context followed by F*N free slots, where
        this block's roped K and V are written; ``mask`` [B, 1, 1, S] (None: all valid).
        Returns the new x and the block's un-roped K and V [B, F, N, Hh, Dh].
        The two halves around the attention have fixed shapes (they never see the context
        length), so ``WanDiT.compile_layers`` compiles each once for all layers.
        """
        pre, post = self.compiled or (self.pre_attention, self.post_attention)
        q, k_roped, k, v = pre(x, e, *rope)
        m = k_buf.shape[1] - k_roped.shape[1]
        k_buf[:, m:] = k_roped
        v_buf[:, m:] = v.flatten(1, 2)
        y = attend(q, k_buf, v_buf, mask)
        return post(x, y, e, cross_k, cross_v), k, v


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x [B, F, N, D]; e [B, F, D] (time embedding) -> [B, F, N, prod(patch) * C]."""
        shift, scale = (self.modulation.unsqueeze(1) + e[:, :, None]).chunk(2, dim=2)
        h = layer_norm(x, self.eps) * (1 + scale) + shift
        return self.head(h.to(self.head.weight.dtype))


class WanDiT(nn.Module):
    """Predicts the flow-matching velocity of a block of frames attending to a K/V context."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch, stride=cfg.patch)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d),
                                            nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(),
                                            nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.head.head.weight.dtype

    def set_dtype(self, dtype: torch.dtype) -> WanDiT:
        """Cast the weights to ``dtype``, keeping the modulation path in float32."""
        for name, p in self.named_parameters():
            p.data = p.data.to(torch.float32 if any(k in name for k in FP32_PARAMS) else dtype)
        return self

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Wan2.1's ``init_weights`` (Xavier, N(0, .02) embeddings), seeded; unlike Wan the output
        head is not zeroed, so that randomly initialised models respond to their inputs."""
        gen = torch.Generator(device=self.head.head.weight.device).manual_seed(seed)
        d = self.cfg.dim
        for name, m in self.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv3d)):
                if name.startswith(("text_embedding", "time_embedding")):
                    m.weight.normal_(0.0, 0.02, generator=gen)
                else:
                    fan_out, fan_in = m.weight.shape[0], m.weight[0].numel()
                    bound = math.sqrt(6.0 / (fan_in + fan_out))
                    m.weight.uniform_(-bound, bound, generator=gen)
                m.bias.zero_()
            elif isinstance(m, (RMSNorm, nn.LayerNorm)):
                m.weight.fill_(1.0)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(m, (Block, Head)):
                m.modulation.normal_(0.0, 1.0 / d ** 0.5, generator=gen)

    def compile_layers(self) -> None:
        """torch.compile the fixed-shape halves of every layer (norms, modulation, RoPE,
        projections, cross-attention, FFN; one graph shared by all layers) and the RoPE of the
        context; the self-attention over the variable-length context stays eager."""
        for block in self.blocks:
            block.compiled = (torch.compile(block.pre_attention, dynamic=False),
                              torch.compile(block.post_attention, dynamic=False))

    def fuse_ffn_epilogue(self) -> None:
        """Each FFN's bias and GELU in its first GEMM's epilogue (``linear_gelu``; CUDA, plain
        bf16/fp16 linear layers: not after float8 conversion)."""
        for block in self.blocks:
            block.fused_gelu = True

    def text_kv(self, text: Tensor) -> Tensor:
        """Prompt embeddings [P, Lt, text_dim] (zero-padded to text_len as Wan does) ->
        cross-attention K (normed) and V of every layer [L, 2, P, text_len, Hh, Dh]."""
        pad = self.cfg.text_len - text.shape[1]
        ctx = self.text_embedding(F.pad(text, (0, 0, 0, pad)).to(self.dtype))
        return torch.stack([torch.stack(b.cross_attn.keys_values(ctx)) for b in self.blocks])

    def time_embed(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Timesteps [B, F] -> e [B, F, D] (head) and e0 [B, F, 6, D] (blocks), float32."""
        e = self.time_embedding(sinusoidal(t, self.cfg.freq_dim))
        return e, self.time_projection(e).unflatten(-1, (6, self.cfg.dim))

    def embed(self, x: Tensor) -> Tensor:
        """Latent frames [B, F, C, H, W] -> tokens [B, F, N, D] (float32), rows then columns."""
        _, ph, pw = self.cfg.patch
        patches = rearrange(x, "b f c (h p) (w q) -> b f (h w) (c p q)", p=ph, q=pw)
        w = self.patch_embedding.weight.flatten(1)  # [D, C * 1 * ph * pw], the conv as a matmul
        return F.linear(patches.to(self.dtype), w, self.patch_embedding.bias).float()

    def unpatchify(self, out: Tensor) -> Tensor:
        """Head output [B, F, N, (ph pw C)] -> [B, F, C, H, W] (Wan's channel-last patch order)."""
        _, ph, pw = self.cfg.patch
        return rearrange(out, "b f (h w) (p q c) -> b f c (h p) (w q)", h=self.cfg.grid[0],
                         p=ph, q=pw)

    def forward(self, x: Tensor, t: Tensor, rope: tuple[Tensor, Tensor], k_buf: Tensor,
                v_buf: Tensor, mask: Tensor | None, cross: Tensor,
                return_kv: bool = False) -> Tensor:
        """x [B, F, C, H, W]; t [B, F]; ``k_buf``/``v_buf`` [L, B, S, Hh, Dh] (context + free
        block slots, see ``Block.forward``); ``cross`` [L, 2, ...] text K/V.

        Returns the velocity [B, F, C, H, W] (float32), or with ``return_kv`` the K/V of these
        frames [L, 2, B, F, N, Hh, Dh] (K un-roped) in the compute dtype.
        """
        h = self.embed(x)  # [B, F, N, D]
        e, e0 = self.time_embed(t)
        kv = None
        if return_kv:
            b, f, n = h.shape[:3]
            kv = h.new_empty((len(self.blocks), 2, b, f, n, self.cfg.num_heads,
                              self.cfg.head_dim), dtype=self.dtype)
        for i, block in enumerate(self.blocks):
            if return_kv and i == len(self.blocks) - 1:  # the last layer's output is not needed
                kv[i, 0], kv[i, 1] = block.keys_values(h, e0)
                return kv
            h, k, v = block(h, e0, rope, k_buf[i], v_buf[i], mask, cross[i, 0], cross[i, 1])
            if return_kv:
                kv[i, 0], kv[i, 1] = k, v
        return self.unpatchify(self.head(h, e)).float()
