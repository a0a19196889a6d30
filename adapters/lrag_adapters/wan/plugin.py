"""Entry point of the built-in Wan2.1 causal backbones, one registered name per preset."""
from lrag_framework import hookimpl

LRAG_API_VERSION = 2


def build_wan(params):
    from .backbone import WanBackbone

    return WanBackbone(params)


@hookimpl
def register_backbones(register):
    from .presets import PRESETS

    for name, params_model in PRESETS.items():
        register(name, build_wan, params_model)
