"""Camera paths over the panorama and the per-frame actions that condition the backbone.

A path is an int64 array ``[T, 2]`` of camera positions ``(x, y)`` in panorama pixels: ``x`` is
*unwrapped* (it may leave ``[0, width)``; rendering wraps it), ``y`` is the top row, in
``[0, y_max]``. The action of frame ``t`` is the camera motion that led to it,
``(p[t] - p[t-1]) / ACTION_SCALE`` (zero for the first frame), so speeds up to ``ACTION_SCALE``
pixels per frame map into [-1, 1].
"""
from __future__ import annotations

import numpy as np

ACTION_DIM = 2
ACTION_SCALE = 8.0  # pixels per frame that map to action 1.0
_PATH_STREAM = 1  # rng stream of paths, apart from the world's own stream


def _check_path(path: np.ndarray) -> np.ndarray:
    path = np.asarray(path)
    if path.ndim != 2 or path.shape[1] != 2 or len(path) == 0:
        raise ValueError(f"camera path must be [T >= 1, 2], got shape {list(path.shape)}")
    if not np.issubdtype(path.dtype, np.integer):
        raise ValueError(f"camera path must hold integer pixels, got dtype {path.dtype}")
    return path.astype(np.int64)


def actions(path: np.ndarray) -> np.ndarray:
    """Per-frame actions float32 ``[T, 2]`` (dx, dy) / ACTION_SCALE; the first row is zero."""
    path = _check_path(path)
    out = np.zeros(path.shape, np.float32)
    out[1:] = np.diff(path, axis=0) / ACTION_SCALE
    return out


def path_from_actions(acts: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`actions`: the path ``[T, 2]`` starting at ``start`` (the first action is
    ignored, as it carries no motion)."""
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 2 or acts.shape[1] != ACTION_DIM or len(acts) == 0:
        raise ValueError(f"actions must be [T >= 1, {ACTION_DIM}], got shape {list(acts.shape)}")
    if not np.isfinite(acts).all():
        raise ValueError("actions contain NaN or inf")
    steps = np.rint(acts[1:] * ACTION_SCALE).astype(np.int64)  # [T-1, 2]
    path = np.empty(acts.shape, np.int64)
    path[0] = start
    path[1:] = np.asarray(start, np.int64) + np.cumsum(steps, axis=0)
    return path


def _check(length: int, y_max: int) -> None:
    if length < 1:
        raise ValueError(f"path length must be >= 1, got {length}")
    if y_max < 0:
        raise ValueError(f"y_max must be >= 0, got {y_max}")


def random_walk(seed: int, length: int, y_max: int = 16, max_speed: float = 6.0,
                momentum: float = 0.9, turn_prob: float = 0.03, change_prob: float = 0.04,
                start_x: int | None = None) -> np.ndarray:
    """Training path: horizontal velocity with momentum toward a target speed that changes now
    and then (``change_prob`` per frame, sometimes to a stop) and flips sign (a turn-back,
    ``turn_prob`` per frame); a slow vertical drift reflected at ``0`` and ``y_max``."""
    _check(length, y_max)
    if not 0 < max_speed <= ACTION_SCALE:
        raise ValueError(f"max_speed must be in (0, {ACTION_SCALE}], got {max_speed}")
    rng = np.random.default_rng([seed, _PATH_STREAM])
    draws = rng.random((length, 4))  # [T, (change?, new speed, turn?, vertical)]
    x = float(rng.integers(0, 1 << 12) if start_x is None else start_x)
    y = float(rng.integers(0, y_max + 1))
    target = rng.uniform(1.0, max_speed) * rng.choice((-1.0, 1.0))
    v = target
    vy = 0.0
    xs, ys = np.empty(length), np.empty(length)
    for t in range(length):  # one step per frame; all pixel work is vectorised elsewhere
        if draws[t, 0] < change_prob:
            target = np.sign(target or 1.0) * max_speed * max(0.0, draws[t, 1] * 1.2 - 0.2)
        if draws[t, 2] < turn_prob:
            target = -target
        v = momentum * v + (1 - momentum) * target
        vy = 0.9 * vy + 0.3 * (draws[t, 3] - 0.5)
        if t:
            x += v
            y += vy
            if not 0 <= y <= y_max:
                y, vy = float(np.clip(y, 0, y_max)), -vy
        xs[t], ys[t] = x, y
    return np.stack((np.rint(xs), np.clip(np.rint(ys), 0, y_max)), axis=1).astype(np.int64)


def revisit(seed: int, length: int, y_max: int = 16, span_frames: float = 3.0,
            frame: int = 64, speed: int | None = None) -> np.ndarray:
    """Evaluation path: pans ``span_frames`` frame widths away at a constant integer ``speed``
    (seeded from 2..5 px/frame when None) and back, again and again, over the same places;
    ``y`` stays fixed. Direction, start and ``y`` come from the seed."""
    _check(length, y_max)
    rng = np.random.default_rng([seed, _PATH_STREAM])
    speed = int(rng.integers(2, 6)) if speed is None else int(speed)
    if speed < 1:
        raise ValueError(f"revisit speed must be >= 1 px/frame, got {speed}")
    span = round(span_frames * frame)
    if span < speed:
        raise ValueError(f"revisit span {span} px is shorter than one step of {speed} px")
    x0, y = int(rng.integers(0, 1 << 12)), int(rng.integers(0, y_max + 1))
    direction = int(rng.choice((-1, 1)))
    s = np.arange(length, dtype=np.int64) * speed % (2 * span)  # distance travelled in a cycle
    x = x0 + direction * (span - np.abs(span - s))  # out to +span, back to 0
    return np.stack((x, np.full(length, y, np.int64)), axis=1)
