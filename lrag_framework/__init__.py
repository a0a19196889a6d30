"""lrag-framework: retrieval-augmented autoregressive long video generation."""
from .hookspecs import API_VERSION, hookimpl

__version__ = "0.1.0"
__all__ = ["API_VERSION", "__version__", "hookimpl", "load_config", "run"]


def run(config, **overrides):
    """Run a generation job from a RunConfig, a dict, or a YAML/JSON path; returns a RunResult."""
    from .runner import run as _run

    return _run(config, **overrides)


def load_config(config):
    """Validate a RunConfig from a model, a dict, or a YAML/JSON path (raises ConfigError)."""
    from .config import load_config as _load

    return _load(config)
