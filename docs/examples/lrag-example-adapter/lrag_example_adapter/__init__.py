"""lrag-example-adapter: a third-party plugin package for lrag-framework.

Registers two components, both written from scratch against ``lrag_framework.interfaces``:

- the backbone ``example_patch``: a 2-layer patch transformer over 16x16 RGB frames
  (``backbone.py``), small enough to generate on a laptop CPU;
- the retriever ``example_flat``: exact cosine top-K over a flat list per stream
  (``retriever.py``), built on the helpers of ``lrag_framework.retrieval``.

Use them in a run config as ``backbone: {name: example_patch}`` and
``retriever: {name: example_flat}``. This module only imports pydantic and lrag_framework: torch
code is imported inside the factories, so ``lrag plugins`` stays fast.
"""
from pydantic import BaseModel, ConfigDict, Field

from lrag_framework import hookimpl

LRAG_API_VERSION = 3  # the plugin API this package was written for


class PatchParams(BaseModel):
    """Params of ``example_patch`` (unknown fields are an error, as in every lrag component)."""

    model_config = ConfigDict(extra="forbid")
    dim: int = Field(32, ge=8, description="model width (a multiple of heads)")
    heads: int = Field(2, ge=1)
    layers: int = Field(2, ge=1)
    window: int = Field(6, ge=2, description="attention window in frames, incl. sink and block")
    init_seed: int = Field(0, description="seed of the random weights")


def build_patch(params: PatchParams):
    """Factory: called by lrag-framework with validated params; returns a Backbone."""
    from .backbone import PatchBackbone

    return PatchBackbone(params)


def build_flat():
    from .retriever import FlatRetriever

    return FlatRetriever()


@hookimpl
def register_backbones(register):
    register("example_patch", build_patch, PatchParams)


@hookimpl
def register_retrievers(register):
    register("example_flat", build_flat)  # no params model: it takes none
