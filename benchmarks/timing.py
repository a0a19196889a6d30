"""Timing helper shared by the benchmark scripts (run as `python benchmarks/NAME.py`)."""
import statistics
import time


def median_time(fn, repeats: int, sync, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds over ``repeats`` runs after ``warmup`` runs;
    ``sync`` waits for asynchronous device work (e.g. ``torch.cuda.synchronize``)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
