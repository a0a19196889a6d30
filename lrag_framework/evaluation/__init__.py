"""Long-video evaluation of run directories: VBench(-Long) metrics from local weights and
weight-free drift measures (``docs/eval.md``)."""
from .config import EvalConfig, load_eval_config
from .evaluate import SCHEMA_VERSION, evaluate_run, evaluate_runs

__all__ = ["EvalConfig", "SCHEMA_VERSION", "evaluate_run", "evaluate_runs", "load_eval_config"]
