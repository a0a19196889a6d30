"""lrag-example-adapter: a third-party backbone for lrag-framework in one module.

Registers the backbone ``example_tiny``: lrag-framework's tiny block-causal DiT (the classes of
``lrag_adapters.tiny``) at a size picked by a preset, small enough to generate on a laptop CPU.
Use it in a run config as ``backbone: {name: example_tiny, params: {size: s}}``.

This module only imports pydantic and lrag_framework: the torch model is imported inside the
factory, so ``lrag plugins`` stays fast however heavy the model is.
"""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lrag_framework import hookimpl

LRAG_API_VERSION = 1  # the plugin API this module was written for

# Transformer sizes per preset; frames are 16x16 RGB cut into 4x4 patches (16 tokens per frame).
SIZES = {"xs": {"dim": 32, "layers": 2, "heads": 2}, "s": {"dim": 64, "layers": 3, "heads": 4}}


class ExampleTinyParams(BaseModel):
    """Params of ``example_tiny`` (unknown fields are an error, as in every lrag component)."""

    model_config = ConfigDict(extra="forbid")
    size: Literal["xs", "s"] = Field("xs", description="transformer preset, see SIZES")
    window: int = Field(6, ge=2, description="attention window in frames, incl. sink and block")
    init_seed: int = Field(0, description="seed of the random weights")


def build_example_tiny(params: ExampleTinyParams):
    """Factory: called by lrag-framework with validated params; returns a Backbone."""
    from lrag_adapters.tiny.backbone import TinyBackbone
    from lrag_adapters.tiny.params import TinyParams

    return TinyBackbone(TinyParams(height=16, width=16, patch=4, window=params.window, sink=1,
                                   init_seed=params.init_seed, weights=None,
                                   **SIZES[params.size]))


@hookimpl
def register_backbones(register):
    register("example_tiny", build_example_tiny, ExampleTinyParams)
