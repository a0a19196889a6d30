"""lrag-framework: retrieval-augmented autoregressive long video generation."""
from .hookspecs import API_VERSION, hookimpl

__version__ = "0.1.0"
__all__ = ["API_VERSION", "__version__", "hookimpl", "load_config", "run"]


def run(config=None, overrides=(), prefix=None, initial_noise=None, progress=None, resume=None):
    """Run a generation job from a RunConfig, a dict, a YAML/JSON path or None (the built-in
    default), or finish the interrupted run in the directory ``resume``; returns a RunResult
    (see ``lrag_framework.outputs.run_dir.run``)."""
    from .outputs.run_dir import run as _run

    return _run(config, overrides, prefix=prefix, initial_noise=initial_noise, progress=progress,
                resume=resume)


def load_config(config=None, overrides=()):
    """Validate a RunConfig from a model, a dict, or a YAML/JSON path (raises ConfigError)."""
    from .config import load_config as _load

    return _load(config, overrides)
