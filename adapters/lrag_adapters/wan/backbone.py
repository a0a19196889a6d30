"""The Wan2.1 causal family behind the Backbone contract: prompt conditioning (texts through the
umT5 encoder, or embeddings; schedules for prompt switches), few-step flow matching
(Self-Forcing's sampler and timestep warping), a block-causal DiT attending to the engine's
planned context, and the VAE for video out and start frames in."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from lrag_framework.devices import device_error
from lrag_framework.interfaces import Backbone, BackboneSpec, ComponentError, Context

from .conditioning import (WanConditioning, as_segment, check_segments, identity_of,
                           is_segments, read_embedding)
from .model import WanConfig
from .presets import WAN_BASE_DOWNLOAD, WanParams
from .rope import TABLE_POSITIONS, WanRope, apply_rope
from .schedule import FlowSchedule

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Prepared:
    k: Tensor  # [L, B, M + Fb*N, Hh, Dh]: roped context K, then the block's slots
    v: Tensor  # [L, B, M + Fb*N, Hh, Dh]
    mask: Tensor | None  # [B, 1, 1, M + Fb*N] bool, None when every key is valid
    rope: tuple[Tensor, Tensor]  # cos, sin of the block's frames [B, Fb, N, 1, Dh/2]
    frames: Tensor  # [B, Fb] frame ids whose conditioning applies


class WanBackbone(Backbone):
    def __init__(self, params: WanParams):
        from .loading import load_dit

        self.params = params
        self.cfg = WanConfig(dim=params.dim, ffn_dim=params.ffn_dim, num_heads=params.num_heads,
                             num_layers=params.num_layers, in_dim=params.latent_channels,
                             out_dim=params.latent_channels, freq_dim=params.freq_dim,
                             text_dim=params.text_dim, text_len=params.text_len,
                             height=params.latent_height, width=params.latent_width)
        self.schedule = FlowSchedule(params.timestep_shift, params.num_train_timesteps)
        self.rope = WanRope(self.cfg.head_dim, self.cfg.grid)
        self.model = load_dit(params, self.cfg).eval().requires_grad_(False)
        self._vae = None
        self._light = None  # TAEHV's decoder (decoder: taehv)
        self._quantized = False
        self._text = None  # the TextEncoder, built at the first text prompt
        self._roped_context = roped_context
        self._graphs = None  # GraphedPasses (cuda_graphs on CUDA)
        self.device = torch.device("cpu")
        self.dtype = DTYPES.get(params.dtype, torch.float32)
        if not self.model.head.head.weight.is_meta:
            self.model.set_dtype(self.dtype)
        self.spec = BackboneSpec(
            latent_shape=(self.cfg.in_dim, self.cfg.height, self.cfg.width),
            tokens_per_frame=self.cfg.tokens_per_frame, frames_per_block=params.frames_per_block,
            num_layers=self.cfg.num_layers, num_heads=self.cfg.num_heads,
            head_dim=self.cfg.head_dim, kv_dtype=self.dtype, window=params.window,
            sink=params.sink, pixel_size=(8 * self.cfg.height, 8 * self.cfg.width),
            frames_per_latent=4, max_positions=TABLE_POSITIONS)

    def _base_file(self, given: str | None, default: str, what: str) -> str:
        """The file (or folder) param ``what`` gives, else ``default`` in ``base_dir``; a
        missing one is one ComponentError naming it, its source and the param to point at it."""
        if given:
            path = Path(given)
        elif not self.params.base_dir:
            raise ValueError(f"wan: give {what} or base_dir (the Wan2.1 folder that holds "
                             f"{default})")
        else:
            path = Path(self.params.base_dir) / default
        if not path.exists():
            raise ComponentError(f"wan: {path} not found: put {default} of the Wan2.1-T2V-1.3B "
                                 f"folder there ({WAN_BASE_DOWNLOAD}) or point "
                                 f"backbone.params.{what} at it")
        return str(path)

    @property
    def decode_device(self) -> torch.device:
        """Where the VAE and TAEHV run: ``decoder_device``, else the compute device."""
        given = self.params.decoder_device
        return torch.device(given) if given else self.device

    @property
    def vae(self):
        """The Wan2.1 VAE on the decoder's device, loaded at first use."""
        if self._vae is None:
            from .vae import VAEConfig, load_vae, random_vae

            p = self.params
            if p.random_init:
                vae = random_vae(VAEConfig(dim=p.vae_dim or 96), p.init_seed)
            else:
                path = self._base_file(p.vae_ckpt, "Wan2.1_VAE.pth", "vae_ckpt")
                vae = load_vae(path, None if p.vae_dim is None else VAEConfig(dim=p.vae_dim))
            self._vae = vae.to(self.decode_device, self.dtype)
            if self.decode_device.type == "cuda":  # the fast path, see docs/vae.md
                self._vae.channels_last()
                if p.vae_compile:
                    self._vae.compile_decoder()
        return self._vae

    @property
    def light_decoder(self):
        """TAEHV's decoder on the decoder's device (``decoder: taehv``), loaded at first use."""
        if self._light is None:
            from .taehv import TAEHV_FILE, load_taehv, random_taehv

            p = self.params
            if p.random_init and not p.decoder_weights:  # a given file wins over random_init
                model = random_taehv(p.init_seed, self.cfg.in_dim)
            else:
                model = load_taehv(p.decoder_weights or TAEHV_FILE)
            self._light = model.to(self.decode_device, self.dtype)
            if self.decode_device.type == "cuda":
                self._light.to(memory_format=torch.channels_last)
        return self._light

    def encode(self, pixels: Tensor) -> Tensor:
        """Pixels [B, 1 + 4k, 3, 8H, 8W] in [-1, 1] -> latents [B, 1 + k, 16, H, W]."""
        with torch.no_grad():
            z = self.vae.encode(rearrange(pixels.to(self.decode_device),
                                          "b t c h w -> b c t h w"))
        return rearrange(z.float(), "b c f h w -> b f c h w").to(self.device)

    def decode(self, latents: Tensor) -> Tensor:
        return self.stream_decoder()(latents)

    @property
    def vae_chunk(self) -> int:
        """Latent frames per VAE decoder pass: a block's on CUDA (bounded, also for a whole
        video decoded at once), one on the CPU, as upstream (docs/vae.md)."""
        return self.params.frames_per_block if self.decode_device.type == "cuda" else 1

    def stream_decoder(self):
        """Latent blocks [B, F, 16, H, W] -> frames [B, 1 + 4(F-1) first, then 4F, 3, 8H, 8W],
        the decoder's causal state carried from block to block (the VAE, or TAEHV's), on the
        decoder's device (the frames stay there)."""
        device = self.decode_device
        if self.params.decoder == "taehv":
            light = self.light_decoder.stream_decoder()

            def decode_light(latents: Tensor) -> Tensor:
                with torch.no_grad():
                    return light.decode(latents.to(device))

            return decode_light
        stream = self.vae.stream_decoder(self.vae_chunk)

        def decode(latents: Tensor) -> Tensor:
            with torch.no_grad():
                video = stream.decode(rearrange(latents.to(device), "b f c h w -> b c f h w"))
            return rearrange(video, "b c t h w -> b t c h w")

        return decode

    def _encode_text(self, prompts: list[str]) -> list[Tensor]:
        """Prompt texts -> umT5 embeddings [Lt, 4096] through the on-disk cache; the encoder is
        freed as soon as the prompts are encoded (the files' fingerprints, the cache key, are
        read once per backbone and device)."""
        from .text_encoder import CHECKPOINT, TOKENIZER_DIR, T5Config, TextEncoder

        p = self.params
        if self._text is None or self._text.device != self.device:
            ckpt = None if p.random_init else self._base_file(p.text_encoder_ckpt, CHECKPOINT,
                                                              "text_encoder_ckpt")
            self._text = TextEncoder(
                ckpt, self._base_file(p.tokenizer_dir, TOKENIZER_DIR, "tokenizer_dir"),
                T5Config(**p.text_encoder_sizes), self.device,
                torch.bfloat16 if self.device.type == "cuda" else torch.float32,
                p.prompt_cache, seed=p.init_seed)
        encoder = self._text
        try:
            return encoder.encode(prompts)
        finally:
            encoder.free()

    def to(self, device, dtype=None):
        """Move (and for ``random_init``, materialise) the weights; params.dtype wins over
        ``dtype`` unless it is ``auto``."""
        device = torch.device(device)
        error = self.params.decoder_device and device_error(self.params.decoder_device)
        if error:
            raise ComponentError(f"wan: decoder_device: {error}")
        if self._quantized and device != self.device:
            raise ValueError(f"wan: float8 weights stay on {self.device}; build the backbone "
                             f"again to run on {device}")
        self.device = device
        self.dtype = DTYPES.get(self.params.dtype) or dtype or self.dtype
        if self.model.head.head.weight.is_meta:
            self.model.to_empty(device=self.device)
            self.model.init_weights(self.params.init_seed)
        if not self._quantized:
            self.model.set_dtype(self.dtype).to(self.device)
        if self._vae is not None:
            self._vae.to(self.decode_device, self.dtype)
        if self._light is not None:
            self._light.to(self.decode_device, self.dtype)
        if self.params.quantize == "float8" and not self._quantized:
            from .quantize import float8_linears

            float8_linears(self.model, self.device, self.dtype)
            self._quantized = True
        if (self.params.fused_gelu and self.device.type == "cuda"
                and self.params.quantize == "none"):
            self.model.fuse_ffn_epilogue()
        if self.params.compile and self.device.type == "cuda":
            self.model.compile_layers()
            self._roped_context = torch.compile(roped_context, dynamic=True)
        if self.params.cuda_graphs and self.device.type == "cuda":
            from .graphs import GraphedPasses

            self._graphs = GraphedPasses(self.model)
        self.spec = BackboneSpec(**{**self.spec.__dict__, "kv_dtype": self.dtype})
        return self

    def memory_estimate(self, streams: int, num_frames: int) -> int:
        """Weights (DiT, and VAE or TAEHV for video out), the context buffers of one block
        (roped K/V of up to twice the window), its per-layer activations (FFN width, float32
        residual, a few temporaries) and a decoder's working set, the first two twice with CUDA
        graphs (their buffers and pool); the text encoder is freed before generation. An
        estimate for refusing runs that cannot fit, not a measurement."""
        c, p = self.cfg, self.params
        weight = 1 if p.quantize == "float8" else self.dtype.itemsize
        linear = sum(m.weight.numel() for m in self.model.blocks.modules()
                     if isinstance(m, torch.nn.Linear))
        dit = linear * weight + (sum(t.numel() for t in self.model.parameters()) - linear) * 4
        n, block = c.tokens_per_frame, p.frames_per_block
        context = (c.num_layers * 2 * streams * (2 * p.window + block) * n * c.dim
                   * self.dtype.itemsize)
        activations = 6 * streams * block * n * max(c.ffn_dim, 3 * c.dim) * 4
        # one decoded block: 4 video frames a latent frame, 8x8 pixels a latent, 2x2 latents a
        # token; the VAE's working set is ~16 activations of 96 channels at full size (13.6 GiB
        # measured for a whole 3-frame block on the H200, docs/vae.md), TAEHV's far smaller
        if p.decoder == "taehv":  # a whole block a pass
            decoder = 2 * 2 ** 20 + 24 * 3 * 4 * streams * 4 * block * 256 * n
        else:
            pixels = streams * 4 * self.vae_chunk * 256 * n
            decoder = 260 * 2 ** 20 + 16 * 96 * pixels * self.dtype.itemsize
        if self.decode_device != self.device:  # decoder_device: on another device
            decoder = 0
        if p.cuda_graphs and self.device.type == "cuda":  # a second context pair, the graph pool
            context, activations = 2 * context, 2 * activations
        return int(dit + context + activations + decoder)

    def _ready(self) -> None:
        if self.model.head.head.weight.is_meta:  # random init, never moved: CPU
            self.to(self.device, self.dtype)

    # -- conditioning ---------------------------------------------------------------------
    def encode_conditioning(self, items: list[Any], num_frames: int) -> WanConditioning:
        """Each item: a prompt text, a prompt embedding [Lt <= text_len, text_dim] (tensor,
        array, nested list), a path to a .safetensors file holding one, or a schedule of segments
        ``[{start, prompt | embedding}, ...]`` (first start 0; a segment applies from its start
        frame on, moved to the next block boundary by the engine)."""
        self._ready()
        rows = [[as_segment(seg) for seg in check_segments(
            item if is_segments(item) else [{"start": 0, "item": item}], num_frames)]
            for item in items]
        texts = list(dict.fromkeys(seg["prompt"] for row in rows for seg in row
                                   if "prompt" in seg))
        encoded = dict(zip(texts, self._encode_text(texts))) if texts else {}
        embeddings, index_of, table = [], {}, []
        for row in rows:
            entries = []
            for seg in row:
                key = ("text", seg["prompt"]) if "prompt" in seg else identity_of(seg["embedding"])
                if key not in index_of:
                    index_of[key] = len(embeddings)
                    embeddings.append(self._embedding(encoded[seg["prompt"]] if "prompt" in seg
                                                      else seg["embedding"]))
                entries.append((int(seg["start"]), index_of[key]))
            table.append(entries)
        width = max(len(r) for r in table)
        far = np.iinfo(np.int64).max
        starts = torch.tensor([[s for s, _ in r] + [far] * (width - len(r)) for r in table])
        prompts = torch.tensor([[p for _, p in r] + [r[-1][1]] * (width - len(r)) for r in table])
        text = torch.nn.utils.rnn.pad_sequence(embeddings, batch_first=True)  # [P, Lt, text_dim]
        with torch.no_grad():
            text_kv = self.model.text_kv(text.to(self.device))
        switches = sorted({s for r in table for s, _ in r if s > 0})
        return WanConditioning(text_kv, starts, prompts, tuple(switches))

    def _embedding(self, item: Any) -> Tensor:
        if isinstance(item, (str, Path)):
            item = read_embedding(Path(item))
        if item is None:
            raise ValueError("wan: a conditioning is a prompt embedding [Lt, text_dim] (T5 "
                             "output), a .safetensors path or segments, got None")
        x = torch.as_tensor(np.asarray(item, dtype=np.float32)) if not torch.is_tensor(item) \
            else item.detach().float().cpu()
        if x.ndim == 3 and x.shape[0] == 1:
            x = x[0]
        c = self.cfg
        if x.ndim != 2 or x.shape[1] != c.text_dim or not 0 < x.shape[0] <= c.text_len:
            raise ValueError(f"wan: a prompt embedding must be [Lt <= {c.text_len}, "
                             f"{c.text_dim}], got {list(x.shape)}")
        return x

    # -- sampling ---------------------------------------------------------------------------
    def timesteps(self) -> Tensor:
        p = self.params
        if p.warp_denoising_step:
            return self.schedule.warp(p.denoising_steps)
        return torch.tensor(p.denoising_steps, dtype=torch.float32)

    def sampler_step(self, x, prediction, t, t_next, noise):
        """x0 = x_t - sigma_t v; x_next = (1 - sigma_next) x0 + sigma_next noise (float64)."""
        def sigma(s):
            s = self.schedule.sigma(torch.as_tensor(s)).to(x.device, non_blocking=True)
            return s.view(-1, *[1] * (x.ndim - 1)) if s.ndim else s

        x0 = x.double() - sigma(t) * prediction.double()
        s_next = sigma(t_next)
        return ((1 - s_next) * x0 + s_next * noise.double()).to(x.dtype)

    # -- attention --------------------------------------------------------------------------
    def prepare(self, context: Context) -> Prepared:
        self._ready()
        c, dev, dt = self.cfg, self.device, self.dtype
        layers, n = c.num_layers, c.tokens_per_frame
        valid, kv, positions = context.valid, context.kv, context.positions
        if valid.numel() and bool((valid == valid[:1]).all()) and not bool(valid.all()):
            keep = valid[0].nonzero().flatten()  # the same empty slots in every stream: drop
            valid, kv, positions = valid[:, keep], kv[:, :, :, keep], positions[:, keep]
        b, f = valid.shape
        fb = context.block_positions.shape[1]
        m = f * n
        shape = (layers, b, m + fb * n, c.num_heads, c.head_dim)
        if self._graphs is None:
            k = torch.empty(shape, device=dev, dtype=dt)
            v = torch.empty_like(k)
        else:  # a shape seen before: the graphed passes' own buffers
            k, v = self._graphs.context_buffers(shape, dt, dev)
        mask = None
        if f:
            all_valid = bool(valid.all())  # decided on the host: no sync
            valid = valid.to(dev, non_blocking=True)
            keep = valid[:, :, None, None, None]  # [B, F, 1, 1, 1]: zero padded slots
            cos, sin = self.rope.tables(positions, dev)
            for i in range(layers):  # one layer at a time bounds the float32 temporaries
                k[i, :, :m], v[i, :, :m] = self._roped_context(kv[i, 0].to(dev), kv[i, 1].to(dev),
                                                               keep, cos, sin, dt)
            if not all_valid:
                keys = torch.cat((valid.repeat_interleave(n, dim=1),
                                  torch.ones(b, fb * n, dtype=torch.bool, device=dev)), dim=1)
                mask = keys[:, None, None]
        if context.cond_frame is None:
            frames = context.block_start + torch.arange(fb).expand(b, -1)
        else:
            frames = torch.full((b, fb), context.cond_frame)
        return Prepared(k, v, mask, self.rope.tables(context.block_positions, dev), frames)

    def _forward(self, x: Tensor, t: Tensor, cond: WanConditioning, prepared: Prepared,
                 return_kv: bool) -> Tensor:
        with attention_backends(self.params.attention, self.device):
            return self._run_model(x, t, cond, prepared, return_kv)

    def _run_model(self, x: Tensor, t: Tensor, cond: WanConditioning, prepared: Prepared,
                   return_kv: bool) -> Tensor:
        b, f = x.shape[:2]
        if (*prepared.frames.shape, *self.spec.latent_shape) != tuple(x.shape):
            expected = [*prepared.frames.shape, *self.spec.latent_shape]
            raise ValueError(f"wan: expected a block {expected} as prepared, got {list(x.shape)}")
        t_frames = t.to(self.device, torch.float32, non_blocking=True)  # no host sync
        t_frames = t_frames.reshape(-1, 1).expand(b, f)
        run = self._graphs or self.model
        return run(x.to(self.device), t_frames, prepared.rope, prepared.k, prepared.v,
                   prepared.mask, cond.cross(prepared.frames), return_kv)

    @torch.no_grad()
    def denoise(self, x, t, cond, prepared):
        return self._forward(x, t, cond, prepared, return_kv=False)

    @torch.no_grad()
    def recache(self, clean, cond, prepared):
        t = torch.zeros(clean.shape[0])
        return self._forward(clean, t, cond, prepared, return_kv=True)


def roped_context(k: Tensor, v: Tensor, keep: Tensor, cos: Tensor, sin: Tensor,
                  dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Context K/V of one layer [B, F, N, Hh, Dh] -> K roped at the planned positions, both
    zeroed in invalid slots (``keep`` [B, F, 1, 1, 1]) and flattened to [B, F*N, Hh, Dh]."""
    k = torch.where(keep, apply_rope(k.to(dtype), cos, sin), 0)
    return k.flatten(1, 2), torch.where(keep, v.to(dtype), 0).flatten(1, 2)


def attention_backends(choice: str, device: torch.device):
    """SDPA kernels in order of preference on CUDA: cuDNN first (about 1.4x the flash kernel on
    an H100 at these shapes, see docs/benchmarks.md), or flash first; ``default`` keeps torch's
    own order. Every order ends with the always-available math kernel."""
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device.type != "cuda" or choice == "default":
        return nullcontext()
    first = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]
    if choice == "flash":
        first.reverse()
    return sdpa_kernel([*first, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
                       set_priority=True)
