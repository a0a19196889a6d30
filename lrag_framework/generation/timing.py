"""Wall-clock seconds per named phase of a loop."""
from __future__ import annotations

import time
from contextlib import contextmanager


class Stopwatch:
    """Seconds per phase, summed over calls: ``with clock("denoise"): ...``."""

    def __init__(self, *phases: str):
        self.seconds: dict[str, float] = dict.fromkeys(phases, 0.0)

    @contextmanager
    def __call__(self, phase: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t
