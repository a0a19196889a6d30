"""The umT5-XXL text encoder of Wan2.1 (encoder half), its tokenizer, and an on-disk prompt cache.

Upstream: Wan2.1 ``wan/modules/t5.py`` (``T5Encoder``, ``T5EncoderModel``) and
``wan/modules/tokenizers.py`` (``clean='whitespace'``); umT5: Chung et al., "UniMax" (ICLR 2023).
Keys as in Wan's ``models_t5_umt5-xxl-enc-bf16.pth``; choices and fidelity: docs/text_encoder.md.
"""
from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrag_framework.devices import resolve_device
from lrag_framework.files import fingerprint, write_tensors
from lrag_framework.interfaces import ComponentError

from .loading import CheckpointError
from .presets import WAN_BASE_DOWNLOAD

CHECKPOINT = "models_t5_umt5-xxl-enc-bf16.pth"  # in the Wan2.1 base folder
TOKENIZER_DIR = "google/umt5-xxl"
CACHE_ENV = "LRAG_CACHE_DIR"  # root of lrag's caches; prompts go to <root>/prompts
CLEANING = "ftfy-whitespace-2"  # part of the cache key: change it whenever clean_prompt changes


@dataclass(frozen=True)
class T5Config:
    """Encoder sizes; the defaults are umT5-XXL as Wan2.1 builds it (``umt5_xxl``)."""

    vocab: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    text_len: int = 512
    eps: float = 1e-6

    def __post_init__(self):
        bad = [f"{k} {v} (must be > 0)" for k, v in asdict(self).items() if v <= 0]
        if self.dim_attn % self.num_heads:
            bad.append(f"dim_attn {self.dim_attn} (not a multiple of num_heads {self.num_heads})")
        if self.num_buckets % 4 or self.max_distance <= self.num_buckets // 4:
            bad.append(f"num_buckets {self.num_buckets}, max_distance {self.max_distance} (need "
                       f"num_buckets a multiple of 4 and max_distance > num_buckets / 4)")
        if bad:
            raise ValueError(f"T5Config: bad {', '.join(bad)}")


TOKENIZER_WHAT = f"the umT5 tokenizer folder ({TOKENIZER_DIR}/ of the Wan2.1 base folder)"
CHECKPOINT_WHAT = (f"the umT5-XXL encoder state dict ({CHECKPOINT} of the Wan2.1 base folder: "
                   f"token_embedding.weight, blocks.N.*, norm.weight)")


def _missing(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"wan: {path} not found: expected {what}. Download it with: "
                           f"{WAN_BASE_DOWNLOAD}")


# -- text cleaning --------------------------------------------------------------------------------
# Unicode White_Space, as the ``regex`` module's ``\s`` that Wan uses (Python's ``\s`` also
# matches the separators \x1c-\x1f)
_SPACES = re.compile("[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


def clean_prompt(text: str) -> str:
    """Wan's ``clean='whitespace'``: ``ftfy.fix_text``, HTML entities decoded twice, then runs of
    whitespace collapsed to one space and the ends stripped (the order of Wan's tokenizer)."""
    try:
        import ftfy
    except ImportError:
        raise ComponentError("wan: prompts as text need ftfy (pip install 'lrag-framework[wan]')"
                             ) from None
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _SPACES.sub(" ", text).strip()


# -- tokenizer ------------------------------------------------------------------------------------
def _check_prompts(prompts: list[str], who: str) -> None:
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{who} takes a non-empty list of strings, got {prompts!r:.80}")


def _special_token(folder: Path, key: str, default: str) -> str:
    path = folder / "special_tokens_map.json"
    value = json.loads(path.read_text()).get(key, default) if path.is_file() else default
    return value["content"] if isinstance(value, dict) else value


class Tokenizer:
    """The umT5 tokenizer as Wan calls it: cleaned text, EOS appended, truncated to ``text_len``
    (EOS kept) and right-padded to it. Reads ``tokenizer.json`` with the ``tokenizers`` library,
    the file ``transformers.AutoTokenizer`` itself uses for this folder."""

    def __init__(self, folder: str | Path, text_len: int = 512):
        from tokenizers import Tokenizer as Backend  # the `wan` extra
        from tokenizers.processors import TemplateProcessing

        file = Path(folder) / "tokenizer.json"
        if not file.is_file():
            raise _missing(file, TOKENIZER_WHAT)
        self.backend = Backend.from_file(str(file))
        eos = _special_token(file.parent, "eos_token", "</s>")
        pad = _special_token(file.parent, "pad_token", "<pad>")
        self.eos_id, self.pad_id = (self.backend.token_to_id(t) for t in (eos, pad))
        if self.eos_id is None or self.pad_id is None:
            raise CheckpointError(f"wan: {file} lacks the EOS {eos!r} or pad {pad!r} token named "
                                  f"in special_tokens_map.json; expected {TOKENIZER_WHAT}. "
                                  f"Download it with: {WAN_BASE_DOWNLOAD}")
        self.text_len = text_len
        self.backend.post_processor = TemplateProcessing(single=f"$A {eos}",
                                                         special_tokens=[(eos, self.eos_id)])
        self.backend.enable_truncation(max_length=text_len)
        self.backend.enable_padding(length=text_len, pad_id=self.pad_id, pad_token=pad)

    def __call__(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """``(ids, mask)``, both ``[B, text_len]`` long; mask 1 on real tokens (EOS included)."""
        _check_prompts(prompts, "Tokenizer")
        encodings = self.backend.encode_batch([clean_prompt(p) for p in prompts])
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)  # [B, text_len]
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask


# -- the encoder ----------------------------------------------------------------------------------
def relative_buckets(length: int, num_buckets: int = 32, max_distance: int = 128,
                     device: torch.device | str | None = None) -> Tensor:
    """T5's bidirectional relative-position bucket of each (query i, key j), ``[L, L]`` long.

    Half the buckets per direction (keys after the query take the upper half); in each half,
    distances below a quarter of ``num_buckets`` get one bucket each, longer ones share
    logarithmic bins, and distances from ``max_distance`` on share the last bucket."""
    pos = torch.arange(length, device=device)
    rel = pos[None, :] - pos[:, None]  # [Lq, Lk] key - query
    half = num_buckets // 2
    exact = half // 2
    dist = rel.abs()
    # the same float32 operations, in the same order, as Wan and transformers: same truncation
    log_bin = torch.log(dist.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_bin * (half - exact)).long()).clamp(max=half - 1)
    return (rel > 0).long() * half + torch.where(dist < exact, dist, far)


class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction; statistics in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.type_as(self.weight)


class Attention(nn.Module):
    """Multi-head self-attention without the 1/sqrt(d) scaling (T5 folds it into the init)."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.k = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.v = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.o = nn.Linear(cfg.dim_attn, cfg.dim, bias=False)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        b, n, _ = x.shape  # [B, L, C]

        def heads(t: Tensor) -> Tensor:  # [B, L, N*c] -> [B, N, L, c]
            return t.view(b, n, self.num_heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)),
                                             attn_mask=bias, scale=1.0)  # [B, N, L, c]
        return self.o(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    """Gated GELU (tanh approximation): ``fc2(fc1(x) * gelu(gate(x)))``."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(cfg.dim, cfg.dim_ffn, bias=False),
                                  nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(cfg.dim, cfg.dim_ffn, bias=False)
        self.fc2 = nn.Linear(cfg.dim_ffn, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


def _fp16_clamp(x: Tensor) -> Tensor:  # as Wan and transformers: infinities back into range
    if x.dtype == torch.float16 and torch.isinf(x).any():
        x = x.clamp(-torch.finfo(x.dtype).max + 1000, torch.finfo(x.dtype).max - 1000)
    return x


class Block(nn.Module):
    """Pre-norm self-attention and feed-forward, each added to the residual stream."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.dim, cfg.eps)
        self.ffn = FeedForward(cfg)
        # a learned bias per (bucket, head), one per layer in umT5 (Wan's shared_pos=False)
        self.pos_embedding = nn.ModuleDict({"embedding": nn.Embedding(cfg.num_buckets,
                                                                      cfg.num_heads)})

    def forward(self, x: Tensor, buckets: Tensor, keep: Tensor) -> Tensor:
        bias = self.pos_embedding["embedding"](buckets).permute(2, 0, 1)[None]  # [1, N, L, L]
        # padded keys get the dtype's minimum, as Wan: [B, N, L, L]
        bias = bias.to(x.dtype).masked_fill(~keep, torch.finfo(x.dtype).min)
        x = _fp16_clamp(x + self.attn(self.norm1(x), bias))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """The encoder of umT5 with Wan's module names (state dict of Wan's checkpoint)."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim, cfg.eps)

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """ids ``[B, L]`` long, mask ``[B, L]`` (nonzero on real tokens) -> ``[B, L, C]``."""
        if ids.ndim != 2 or (mask is not None and mask.shape != ids.shape):
            raise ValueError(f"UMT5Encoder: ids [B, L] and mask of the same shape expected, got "
                             f"{list(ids.shape)} and {None if mask is None else list(mask.shape)}")
        if mask is None:
            mask = torch.ones_like(ids)
        x = self.token_embedding(ids)  # [B, L, C]
        buckets = relative_buckets(ids.shape[1], self.cfg.num_buckets, self.cfg.max_distance,
                                   ids.device)  # [L, L]
        keep = mask.bool()[:, None, None, :]  # [B, 1, 1, L]
        for block in self.blocks:
            x = block(x, buckets, keep)
        return self.norm(x)


def load_umt5(path: str | Path, config: T5Config = T5Config()) -> UMT5Encoder:
    """The encoder with the weights of a plain state dict (Wan's file), on CPU in its dtype: built
    on the meta device and handed the loaded tensors (``assign=True``), memory-mapped from a zip
    checkpoint, so never two copies. Strict: one ``CheckpointError`` lists every bad key."""
    path, what = Path(path), CHECKPOINT_WHAT
    if not path.is_file():
        raise _missing(path, what)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True,
                           mmap=zipfile.is_zipfile(path))
    except Exception as err:  # unpickling refused or a corrupt file: say which file
        raise CheckpointError(f"wan: cannot read {path} as {what} with "
                              f"torch.load(weights_only=True): {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"wan: {path}: expected {what}, got {type(state).__name__}")
    with torch.device("meta"):
        model = UMT5Encoder(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {list(state[k].shape)} (model {list(s)})" for k, s in expected.items()
              if k in state and tuple(state[k].shape) != s]
    parts = [f"{label} {', '.join(items[:6])}" + (f" ... ({len(items)} in all)" * (len(items) > 6))
             for label, items in (("missing", missing), ("unexpected", unexpected),
                                  ("wrong shapes", shapes)) if items]
    if parts:
        raise CheckpointError(f"wan: {path} does not match the umT5 encoder ({config}): "
                              f"{'; '.join(parts)}; expected {what}. Download it with: "
                              f"{WAN_BASE_DOWNLOAD}")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def random_umt5(config: T5Config = T5Config(), seed: int = 0, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> UMT5Encoder:
    """Wan's initialisation (``init_weights`` in t5.py), seeded, made directly on ``device``."""
    c = config
    std = {"token_embedding": 1.0, "attn.q": (c.dim * c.dim_attn) ** -0.5,
           "attn.k": c.dim ** -0.5, "attn.v": c.dim ** -0.5,
           "attn.o": (c.num_heads * c.dim_attn) ** -0.5, "ffn.gate.0": c.dim ** -0.5,
           "ffn.fc1": c.dim ** -0.5, "ffn.fc2": c.dim_ffn ** -0.5,
           "pos_embedding.embedding": (2 * c.num_buckets * c.num_heads) ** -0.5}
    with torch.device("meta"):
        model = UMT5Encoder(config).to(dtype)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            module = name.removesuffix(".weight")
            module = module.split(".", 2)[2] if module.startswith("blocks.") else module
            if module in ("norm", "norm1", "norm2"):
                param.fill_(1.0)
            else:  # drawn in float32 whatever the dtype: the same weights in every dtype
                param.copy_(torch.randn(param.shape, generator=gen, device=device) * std[module])
    return model.eval().requires_grad_(False)


# -- prompt cache ---------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$LRAG_CACHE_DIR/prompts``, else ``~/.cache/lrag/prompts``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/lrag").expanduser() / "prompts"


class TextEncoder:
    """Prompts -> umT5 embeddings ``[Lt, dim]`` (Lt real tokens incl. EOS) for the Wan backbone,
    through an on-disk cache: one safetensors file per (prompt, encoder) holding
    ``prompt_embeds`` (itself a conditioning file). A cached prompt builds and runs nothing; the
    tokenizer and encoder are built at the first miss, and ``free`` drops the encoder."""

    def __init__(self, checkpoint: str | Path | None, tokenizer_dir: str | Path,
                 config: T5Config = T5Config(), device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.bfloat16, cache_dir: str | Path | None = None,
                 batch_size: int = 8, seed: int = 0):
        """``checkpoint`` None: random weights (``random_umt5`` with ``seed``; benchmarks)."""
        self.checkpoint, self.tokenizer_dir = checkpoint and Path(checkpoint), Path(tokenizer_dir)
        self.seed = seed
        for path, what in ((self.checkpoint, CHECKPOINT_WHAT),
                           (self.tokenizer_dir / "tokenizer.json", TOKENIZER_WHAT)):
            if path is not None and not path.is_file():
                raise _missing(path, what)
        if batch_size < 1:
            raise ValueError(f"TextEncoder: batch_size must be >= 1, got {batch_size}")
        self.config, self.dtype, self.batch_size = config, dtype, batch_size
        self.device = resolve_device("auto" if device is None else str(device))
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        files = [self.checkpoint, *(self.tokenizer_dir / name for name in
                                    ("tokenizer.json", "special_tokens_map.json"))]
        # what decides the output: weights, tokenizer, sizes, dtype, cleaning (not the paths)
        self.identity = json.dumps({"files": [fingerprint(p) if p else f"random:{seed}"
                                              for p in files if p is None or p.is_file()],
                                    "config": asdict(config), "dtype": str(dtype),
                                    "cleaning": CLEANING}, sort_keys=True)
        self._tokenizer: Tokenizer | None = None
        self._encoder: UMT5Encoder | None = None

    @classmethod
    def from_base_dir(cls, base_dir: str | Path, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.bfloat16,
                      cache_dir: str | Path | None = None) -> TextEncoder:
        """From a Wan2.1 base folder (``hf download Wan-AI/Wan2.1-T2V-1.3B ...``)."""
        base = Path(base_dir)
        return cls(base / CHECKPOINT, base / TOKENIZER_DIR, T5Config(), device, dtype, cache_dir)

    def cache_path(self, prompt: str) -> Path:
        key = hashlib.sha256(f"{self.identity}\0{prompt}".encode()).hexdigest()
        return self.cache_dir / f"{key}.safetensors"

    def encode(self, prompts: list[str]) -> list[Tensor]:
        """One ``[Lt, dim]`` float32 CPU tensor per prompt."""
        from safetensors.torch import load_file

        _check_prompts(prompts, "TextEncoder.encode")
        paths = {p: self.cache_path(p) for p in prompts}  # also drops repeated prompts
        missing = [p for p, path in paths.items() if not path.is_file()]
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start:start + self.batch_size]
            for prompt, embedding in zip(batch, self._run(batch)):
                paths[prompt].parent.mkdir(parents=True, exist_ok=True)
                write_tensors(paths[prompt], {"prompt_embeds": embedding},
                              {"prompt": prompt, "encoder": self.identity})
        return [load_file(paths[p])["prompt_embeds"].float() for p in prompts]

    def _run(self, prompts: list[str]) -> list[Tensor]:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(self.tokenizer_dir, self.config.text_len)
        if self._encoder is None:
            self._encoder = (random_umt5(self.config, self.seed, self.device, self.dtype)
                             if self.checkpoint is None else
                             load_umt5(self.checkpoint, self.config).to(self.device, self.dtype))
        ids, mask = self._tokenizer(prompts)  # [B, text_len]
        lengths = mask.sum(1).tolist()
        # the mask hides padding, so run only up to the longest prompt (rounded up to 16 for the
        # attention kernels) rather than all text_len tokens as Wan does: same real-token rows
        width = min(self.config.text_len, math.ceil(max(lengths) / 16) * 16)
        with torch.inference_mode():
            out = self._encoder(ids[:, :width].to(self.device), mask[:, :width].to(self.device))
        out = out.cpu()  # [B, width, dim]
        return [row[:n] for row, n in zip(out, lengths)]

    def free(self) -> None:
        """Drop the encoder (11 GB in bf16); a later miss loads it again."""
        self._encoder = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
