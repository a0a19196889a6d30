"""Entry point of the built-in embedders ``avg_pool``, ``latent_ae`` and ``pose``.

Free of torch so listing plugins stays fast; the models are imported by the factories.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from lrag_framework import hookimpl

LRAG_API_VERSION = 3


class AvgPoolParams(BaseModel):
    """``avg_pool`` takes no params."""

    model_config = ConfigDict(extra="forbid")


class PoseParams(BaseModel):
    """``pose``: a Gaussian kernel of the frames' conditioning signals (the camera position),
    optionally mixed with ``avg_pool`` (docs/embedders.md)."""

    model_config = ConfigDict(extra="forbid")
    sigma: float = Field(0.5, gt=0, description="kernel width, in signal units (the tiny "
                         "world: frame widths)")
    period: float = Field(64.0, gt=0, description="the kernel repeats every period; signals "
                          "must stay within +-period/2")
    latent_weight: float = Field(0.0, ge=0, lt=1, description="share of the avg_pool cosine "
                                 "in the score (0: where the frame is, only)")


class LatentAEParams(BaseModel):
    """Architecture of ``latent_ae`` (defaults: Wan latents, the public model) and its weights.

    With ``weights`` the architecture comes from the weights' config; a field given here that
    disagrees with it is an error.
    """

    model_config = ConfigDict(extra="forbid")
    in_channels: int = Field(16, ge=1)
    spatial_h: int = Field(60, ge=1)
    spatial_w: int = Field(104, ge=1)
    latent_dim: int = Field(1024, ge=1, description="embedding dimension D")
    hidden_dims: list[int] = Field([64, 128, 256], min_length=1,
                                   description="encoder stages (each halves H and W)")
    weights: str | None = Field(None, description="a folder with config.json + "
                                "model.safetensors, or a public LongLive-RAG .pt checkpoint; "
                                "none: random initialisation (init_seed)")
    init_seed: int = Field(0, description="seed of the random initialisation")

    def architecture(self) -> dict:
        return self.model_dump(include={"in_channels", "spatial_h", "spatial_w", "latent_dim",
                                        "hidden_dims"})


def build_avg_pool(params: AvgPoolParams):
    from .avg_pool import AvgPoolEmbedder

    return AvgPoolEmbedder()


def build_pose(params: PoseParams):
    from .pose import PoseEmbedder

    return PoseEmbedder(params.sigma, params.period, params.latent_weight)


def build_latent_ae(params: LatentAEParams):
    import torch

    from .ae_weights import load_latent_ae
    from .latent_ae import AEShape, LatentAE, LatentAEEmbedder

    if params.weights is None:
        arch = params.architecture()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.init_seed)
            model = LatentAE(AEShape(**{**arch, "hidden_dims": tuple(arch["hidden_dims"])}))
        return LatentAEEmbedder(model)
    model = load_latent_ae(params.weights)
    found = model.shape.to_json()
    given = params.architecture()
    clash = {k: (given[k], found[k]) for k in params.model_fields_set & given.keys()
             if given[k] != found[k]}
    if clash:
        raise ValueError(f"latent_ae params disagree with the config of {params.weights}: "
                         + ", ".join(f"{k}={a} (weights: {b})" for k, (a, b) in clash.items()))
    return LatentAEEmbedder(model)


@hookimpl
def register_embedders(register):
    register("avg_pool", build_avg_pool, AvgPoolParams)
    register("latent_ae", build_latent_ae, LatentAEParams)
    register("pose", build_pose, PoseParams)
