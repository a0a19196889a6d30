"""Params of the Wan2.1 causal backbones, one model per preset (torch-free: cheap to import).

Preset defaults come from the LongLive-RAG configs (``configs/<backbone>_latentmem.yaml``) where
they exist and from each project's own configs otherwise; every value and its source file is
listed in ``docs/backbones.md``. Any field can be overridden in the run config.
"""
from __future__ import annotations

from itertools import pairwise
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

WAN_BASE_DOWNLOAD = "hf download Wan-AI/Wan2.1-T2V-1.3B --local-dir wan_models/Wan2.1-T2V-1.3B"
LONGLIVE_RAG_DOWNLOAD = ("hf download qixinhu11/LongLive-RAG --local-dir . --include "
                         "'checkpoints/*'")


class WanParams(BaseModel):
    """Checkpoints, sizes (defaults: Wan2.1-T2V-1.3B at 480x832), sampler and context defaults."""

    model_config = ConfigDict(extra="forbid")
    download: ClassVar[str] = LONGLIVE_RAG_DOWNLOAD  # the command that fetches generator_ckpt

    # checkpoints
    base_dir: str | None = Field(
        "wan_models/Wan2.1-T2V-1.3B", description="Wan2.1 folder (config.json + "
        "diffusion_pytorch_model.safetensors): the weights when no generator_ckpt is given, "
        "else only checked against the sizes if present")
    generator_ckpt: str | None = Field(None, description=".pt with generator / generator_ema")
    use_ema: bool = Field(False, description="load the generator_ema entry instead of generator")
    lora_ckpt: str | None = Field(None, description="LoRA .pt (peft layout) merged at load")
    lora_rank: int = Field(256, ge=1)
    lora_alpha: float = Field(256.0, gt=0)
    random_init: bool = Field(False, description="no checkpoint: Wan's init, seeded (benchmarks)")
    init_seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: the run's dtype (bf16 on GPU, fp32 on CPU)")
    attention: Literal["cudnn", "flash", "default"] = Field(
        "cudnn", description="preferred SDPA kernel on CUDA (falls back in order when a kernel "
        "cannot serve a call); default: torch's own choice")
    compile: bool = Field(True, description="torch.compile each layer's fixed-shape parts on "
                          "CUDA (about 1.4x; compiled during the run's warm-up, ~15 s once per "
                          "process); ignored on CPU")
    fused_gelu: bool = Field(True, description="the FFN's bias and GELU in the epilogue of its "
                             "first GEMM (cuBLASLt) on CUDA: one kernel and one FFN-wide "
                             "activation round trip less per layer; not with quantize: float8; "
                             "ignored on CPU")
    cuda_graphs: bool = Field(True, description="replay each DiT pass as a CUDA graph once its "
                              "context shape repeats (the steady state): one launch instead of "
                              "~900 per pass, same outputs; ignored on CPU (docs/backbones.md)")

    # text encoder (prompts given as text) and VAE (video output, image/video start frames)
    text_encoder_ckpt: str | None = Field(None, description="umT5 encoder state dict; default: "
                                          "<base_dir>/models_t5_umt5-xxl-enc-bf16.pth")
    tokenizer_dir: str | None = Field(None, description="default: <base_dir>/google/umt5-xxl")
    text_encoder_sizes: dict[str, int] = Field({}, description="T5Config overrides (small "
                                               "checkpoints); default: umT5-XXL")
    prompt_cache: str | None = Field(None, description="prompt embedding cache folder; default: "
                                     "$LRAG_CACHE_DIR/prompts or ~/.cache/lrag/prompts")
    vae_ckpt: str | None = Field(None, description="default: <base_dir>/Wan2.1_VAE.pth")
    vae_dim: int | None = Field(None, ge=2, description="VAE base width; default: read from the "
                                "checkpoint (96 with random_init)")
    decoder: Literal["vae", "taehv"] = Field(
        "vae", description="video out: the Wan2.1 VAE (quality; start frames always use it) or "
        "TAEHV's tiny decoder (real time, previews; taew2_1 weights)")
    decoder_weights: str | None = Field(None, description="TAEHV file (taew2_1.pth or "
                                        ".safetensors); default: wan_models/taew2_1.pth")
    decoder_device: str | None = Field(
        None, pattern=r"^(cpu|cuda(:\d+)?)$", description="device of the video decoder (VAE or "
        "TAEHV), e.g. cuda:1: the DiT on one GPU, decoding beside it on another; default: the "
        "compute device")
    vae_compile: bool = Field(True, description="torch.compile the VAE decoder on CUDA (about "
                              "1.7x; compiled in the run's warm-up when video is written, "
                              "~40 s once per process; see docs/vae.md); ignored on CPU")
    quantize: Literal["none", "float8"] = Field(
        "none", description="float8: the DiT's linear layers in float8 (torchao, dynamic "
        "per-row scales; CUDA with compute capability >= 8.9, bf16; pip install "
        "'lrag-framework[fp8]')")

    # sizes
    num_layers: int = Field(30, ge=1)
    dim: int = Field(1536, ge=2)
    num_heads: int = Field(12, ge=1)
    ffn_dim: int = Field(8960, ge=1)
    freq_dim: int = Field(256, ge=2)
    text_dim: int = Field(4096, ge=1)
    text_len: int = Field(512, ge=1)
    latent_channels: int = Field(16, ge=1)
    latent_height: int = Field(60, ge=2)
    latent_width: int = Field(104, ge=2)

    # sampler
    denoising_steps: list[int] = Field([1000, 750, 500, 250], min_length=1,
                                       description="timesteps of one block, descending")
    warp_denoising_step: bool = Field(True, description="map the steps through the shifted "
                                      "sigma table (Self-Forcing warp_denoising_step)")
    timestep_shift: float = Field(5.0, gt=0)
    num_train_timesteps: int = Field(1000, ge=1)

    # context defaults (the run config's generation section overrides them)
    frames_per_block: int = Field(3, ge=1)
    window: int = Field(12, ge=2, description="local_attn_size: frames incl. sink and block")
    sink: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _check(self):
        steps, top = self.denoising_steps, self.num_train_timesteps
        if any(a <= b for a, b in pairwise(steps)) or steps[-1] <= 0 or steps[0] > top:
            raise ValueError(f"denoising_steps must descend within (0, {top}], got {steps}")
        if not self.random_init and not (self.generator_ckpt or self.base_dir):
            raise ValueError("give generator_ckpt or base_dir, or set random_init: true")
        return self


class SelfForcingParams(WanParams):
    generator_ckpt: str | None = "checkpoints/self_forcing.pt"
    use_ema: bool = True


class CausalForcingParams(WanParams):
    generator_ckpt: str | None = "checkpoints/causal_forcing.pt"


class LongLiveParams(WanParams):
    generator_ckpt: str | None = "checkpoints/longlive_base.pt"
    lora_ckpt: str | None = "checkpoints/longlive_lora.pt"


class CausVidParams(WanParams):
    download: ClassVar[str] = ("hf download tianweiy/CausVid autoregressive_checkpoint/model.pt "
                               "--local-dir checkpoints/causvid")
    generator_ckpt: str | None = "checkpoints/causvid/autoregressive_checkpoint/model.pt"
    denoising_steps: list[int] = [1000, 757, 522]
    warp_denoising_step: bool = False
    timestep_shift: float = 8.0
    window: int = 21
    sink: int = 0


PRESETS: dict[str, type[WanParams]] = {
    "self_forcing": SelfForcingParams,
    "causal_forcing": CausalForcingParams,
    "causvid": CausVidParams,
    "longlive": LongLiveParams,
}
