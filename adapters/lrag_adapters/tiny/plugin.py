"""Entry point of the built-in ``tiny`` backbone (registered like any third-party plugin)."""
from lrag_framework import hookimpl

LRAG_API_VERSION = 2


def build_tiny(params):
    from .backbone import TinyBackbone

    return TinyBackbone(params)


@hookimpl
def register_backbones(register):
    from .params import TinyParams

    register("tiny", build_tiny, TinyParams)
