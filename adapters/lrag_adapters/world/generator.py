"""A procedural world with known truth: a camera pans over a wrapping panorama with subjects.

The panorama is ``width_frames * frame`` pixels wide (it wraps horizontally) and ``frame +
margin`` high: a sky over a ground split by a wavy horizon, smooth value noise at several
scales (colour that changes from place to place, texture down to 4 px) and a few towers, so every
place looks distinct. Subjects (shape, colour, pattern = identity) stand in panorama
coordinates; moving ones sway around their place on a deterministic periodic path. Everything
is drawn at integer pixels, so the same camera position gives the very same background pixels.
Frames are float32 ``[T, 3, F, F]`` in [-1, 1]. See docs/world.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .paths import _check_path, actions, random_walk, revisit
from .truth import FrameTruth, SubjectBox

SHAPES = ("disc", "square", "triangle", "diamond", "ring", "cross")
COLOURS = {
    "red": (0.9, -0.8, -0.8), "green": (-0.8, 0.85, -0.7), "blue": (-0.8, -0.5, 0.95),
    "yellow": (0.95, 0.9, -0.8), "magenta": (0.9, -0.8, 0.9), "cyan": (-0.8, 0.9, 0.9),
    "orange": (0.95, 0.2, -0.9), "white": (0.95, 0.95, 0.95),
}
PATTERNS = ("solid", "stripes", "dots", "checker")
_WORLD_STREAM = 0  # rng stream of the world, apart from the paths' stream
_MIN_SLOT = 48  # horizontal pixels per subject, so subjects never overlap


@dataclass(frozen=True)
class Subject:
    """A subject: its identity, size and where it stands (centre, panorama pixels)."""

    shape: str
    colour: str
    pattern: str
    radius: int
    x: int
    y: int
    amp_x: int = 0  # sway amplitudes in pixels; 0 and 0 = standing still
    amp_y: int = 0
    period: int = 64  # frames per sway cycle
    phase: float = 0.0

    @property
    def identity(self) -> tuple[str, str, str]:
        return self.shape, self.colour, self.pattern

    @property
    def moving(self) -> bool:
        return bool(self.amp_x or self.amp_y)

    def centres(self, times: np.ndarray) -> np.ndarray:
        """Centre ``[T, 2]`` (x, y) in panorama pixels at each frame time."""
        w = 2 * np.pi * np.asarray(times) / self.period + self.phase
        return np.stack((self.x + np.rint(self.amp_x * np.sin(w)),
                         self.y + np.rint(self.amp_y * np.sin(2 * w))), axis=1).astype(np.int64)

    def sprite(self) -> tuple[np.ndarray, np.ndarray]:
        """Colours float32 ``[3, S, S]`` and mask bool ``[S, S]``, S = 2 * radius + 1."""
        r = self.radius
        v, u = np.mgrid[-r:r + 1, -r:r + 1] / r  # [S, S] each, rows then columns
        d2 = u ** 2 + v ** 2
        mask = {
            "disc": d2 <= 1.0,
            "square": np.maximum(abs(u), abs(v)) <= 0.8,
            "triangle": (v <= 0.8) & (abs(u) <= (v + 0.95) * 0.55),
            "diamond": abs(u) + abs(v) <= 1.0,
            "ring": (d2 <= 1.0) & (d2 >= 0.3),
            "cross": (np.minimum(abs(u), abs(v)) <= 0.3) & (np.maximum(abs(u), abs(v)) <= 0.95),
        }[self.shape]
        i, j = np.mgrid[:2 * r + 1, :2 * r + 1]
        dark = {
            "solid": np.zeros_like(mask),
            "stripes": (i + j) // 3 % 2 == 1,
            "dots": (i % 5 >= 3) & (j % 5 >= 3),
            "checker": (i // 4 + j // 4) % 2 == 1,
        }[self.pattern]
        colour = np.asarray(COLOURS[self.colour], np.float32)[:, None, None]  # [3, 1, 1]
        rgb = np.where(dark[None], colour * 0.2 - 0.7, colour)  # [3, S, S]
        return rgb.astype(np.float32), mask


def _smooth(f: np.ndarray) -> np.ndarray:
    return f * f * (3 - 2 * f)


def _noise(rng: np.random.Generator, channels: int, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth value noise ``[channels, h, w]`` (about unit variance at grid points), periodic in
    x with about ``cell`` pixels per grid step."""
    gw, gh = max(1, round(w / cell)), -(-h // cell) + 1
    grid = rng.standard_normal((channels, gh, gw))
    u = np.arange(w) * gw / w
    i0 = u.astype(np.int64)
    fu = _smooth(u - i0)
    v = np.arange(h) / cell
    j0 = v.astype(np.int64)
    fv = _smooth(v - j0)[:, None]
    rows = grid[:, j0] * (1 - fv) + grid[:, j0 + 1] * fv  # [c, h, gw]
    return rows[:, :, i0] * (1 - fu) + rows[:, :, (i0 + 1) % gw] * fu


def _panorama(rng: np.random.Generator, h: int, w: int, frame: int) -> np.ndarray:
    """The wrapping background, float32 ``[3, h, w]`` in [-1, 1]."""
    horizon = (0.45 * h + 0.1 * frame * _noise(rng, 1, 1, w, frame)[0, 0]
               + 0.03 * frame * _noise(rng, 1, 1, w, max(2, frame // 4))[0, 0])  # [w]
    row = np.arange(h)[:, None]  # [h, 1]
    sky_base = rng.uniform((-0.4, -0.1, 0.3), (0.1, 0.4, 0.9))[:, None, None]  # [3, 1, 1]
    sky = (sky_base + 0.3 * row / h + 0.12 * _noise(rng, 3, h, w, frame)
           + 0.1 * _noise(rng, 1, h, w, max(2, frame // 4)))
    cloud = np.clip(_noise(rng, 1, h, w, frame // 3) - 0.4, 0, 1)  # [1, h, w]
    sky = sky * (1 - cloud) + 0.9 * cloud
    ground = 0.4 * _noise(rng, 3, h, w, 2 * frame) + 0.3 * _noise(rng, 3, h, w, frame // 2)
    for cell, amp in ((frame // 4, 0.2), (frame // 8, 0.15), (frame // 16, 0.1)):
        tint = 1 + 0.5 * rng.standard_normal((3, 1, 1))
        ground += amp * tint * _noise(rng, 1, h, w, max(2, cell))
    pano = np.where(row < horizon[None], sky, ground)  # [3, h, w]
    for _ in range(2 * w // frame):  # towers on the horizon, wrapping like the rest
        cols = (rng.integers(w) + np.arange(rng.integers(3, frame // 4 + 1))) % w
        top = max(0, int(horizon[cols].min()) - int(rng.integers(4, frame // 3 + 1)))
        bottom = min(h, int(horizon[cols].max()) + 2)
        colour = rng.uniform(-0.9, 0.9, (3, 1, 1))
        band = np.where(np.arange(top, bottom) % 6 < 2, 0.6, 1.0)[None, :, None]
        pano[:, top:bottom, cols] = colour * band
    return np.clip(pano, -1, 1).astype(np.float32)


def _subjects(rng: np.random.Generator, n: int, n_moving: int, w: int, h: int,
              frame: int) -> tuple[Subject, ...]:
    """``n`` subjects of distinct identity, one per horizontal slot of ``w / n`` pixels."""
    shapes, colours = rng.permutation(SHAPES), rng.permutation(list(COLOURS))
    moving = set(rng.permutation(n)[:n_moving].tolist())
    slot = w / max(n, 1)
    out = []
    for i in range(n):
        r = int(rng.integers(7, 12))
        amp_x = int(min(frame // 3, slot * 3 / 8 - r - 1)) if i in moving else 0
        amp_y = 3 if i in moving else 0
        out.append(Subject(
            shape=str(shapes[i % len(shapes)]), colour=str(colours[i % len(colours)]),
            pattern=str(rng.choice(PATTERNS)), radius=r,
            x=int(i * slot + slot / 2 + rng.uniform(-slot / 8, slot / 8)),
            y=int(rng.integers(max(r + amp_y, int(0.4 * h)), h - r - amp_y)),
            amp_x=amp_x, amp_y=amp_y, period=int(rng.integers(40, 97)),
            phase=float(rng.uniform(0, 2 * np.pi))))
    return tuple(out)


class World:
    """One seeded world: a panorama ``[3, frame + margin, width_frames * frame]`` and subjects."""

    def __init__(self, seed: int, width_frames: int = 8, frame: int = 64, n_subjects: int = 4,
                 n_moving: int | None = None, margin: int = 16):
        if frame < 32:
            raise ValueError(f"frame must be >= 32 px, got {frame}")
        if width_frames < 2:
            raise ValueError(f"width_frames must be >= 2 (a frame may not see both its own "
                             f"edges), got {width_frames}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.seed, self.frame, self.margin = seed, frame, margin
        self.width, self.height = width_frames * frame, frame + margin
        if not 0 <= n_subjects <= self.width // _MIN_SLOT:
            raise ValueError(f"n_subjects must be in [0, {self.width // _MIN_SLOT}] for a "
                             f"{self.width} px panorama, got {n_subjects}")
        n_moving = n_subjects // 2 if n_moving is None else n_moving
        if not 0 <= n_moving <= n_subjects:
            raise ValueError(f"n_moving must be in [0, n_subjects={n_subjects}], got {n_moving}")
        rng = np.random.default_rng([seed, _WORLD_STREAM])
        self.panorama = _panorama(rng, self.height, self.width, frame)  # [3, Hp, W]
        self.subjects = _subjects(rng, n_subjects, n_moving, self.width, self.height, frame)
        self._sprites = [s.sprite() for s in self.subjects]
        hwc = self.panorama.transpose(1, 2, 0)  # [Hp, W, 3]
        ext = np.concatenate((hwc, hwc[:, :frame - 1]), axis=1)  # [Hp, W + F - 1, 3]
        self._windows = sliding_window_view(ext, (frame, frame), axis=(0, 1))  # [ny, W, 3, F, F]

    @property
    def y_max(self) -> int:
        """Largest camera row (the top row of a frame)."""
        return self.margin

    def render(self, path: np.ndarray, t0: int = 0) -> tuple[np.ndarray, list[FrameTruth]]:
        """Frames float32 ``[T, 3, F, F]`` along a camera path ``[T, 2]`` and their truth.
        Frame ``k`` is at time ``t0 + k`` (moving subjects follow time)."""
        path = _check_path(path)
        x, y = path[:, 0] % self.width, path[:, 1]  # [T] each
        if y.min() < 0 or y.max() > self.y_max:
            raise ValueError(f"camera y must be in [0, {self.y_max}], got range "
                             f"[{y.min()}, {y.max()}]")
        frames = self._windows[y, x]  # [T, 3, F, F], a copy
        times = t0 + np.arange(len(path))
        boxes: list[list[SubjectBox]] = [[] for _ in range(len(path))]
        for s in range(len(self.subjects)):
            self._draw(frames, s, x, y, times, boxes)
        truths = [FrameTruth(int(t), int(a), int(b), self.width, self.frame, tuple(bx))
                  for t, a, b, bx in zip(times, x, y, boxes, strict=True)]
        return frames, truths

    def _draw(self, frames, s, x, y, times, boxes) -> None:
        """Paste subject ``s`` into every frame that sees it and record its boxes."""
        subject, (rgb, mask) = self.subjects[s], self._sprites[s]
        size, f, r = mask.shape[0], self.frame, subject.radius
        centre = subject.centres(times)  # [T, 2]
        left = (centre[:, 0] - r - x) % self.width  # sprite's left column in frame pixels
        left = np.where(left > self.width - size, left - self.width, left)
        top = centre[:, 1] - r - y
        seen = np.flatnonzero((left > -size) & (left < f) & (top > -size) & (top < f))  # [V]
        if len(seen) == 0:
            return
        rows = top[seen, None] + np.arange(size)  # [V, S]
        cols = left[seen, None] + np.arange(size)  # [V, S]
        inside = (mask[None] & ((rows >= 0) & (rows < f))[:, :, None]
                  & ((cols >= 0) & (cols < f))[:, None, :])  # [V, S, S]
        v, i, j = np.nonzero(inside)
        frames[seen[v], :, rows[v, i], cols[v, j]] = rgb[:, i, j].T  # [N, 3]
        counts = np.bincount(v, minlength=len(seen))
        mi, mj = np.nonzero(mask)
        for k in np.flatnonzero(counts):
            t, lx, ty = seen[k], left[seen[k]], top[seen[k]]
            boxes[t].append(SubjectBox(
                s, int(max(0, lx + mj.min())), int(max(0, ty + mi.min())),
                int(min(f, lx + mj.max() + 1)), int(min(f, ty + mi.max() + 1)),
                float(counts[k] / mask.sum())))


def make_clip(seed: int, length: int, path: str = "walk", **world_kwargs
              ) -> tuple[np.ndarray, np.ndarray, list[FrameTruth]]:
    """A clip of world ``seed`` along a ``"walk"`` (training) or ``"revisit"`` path of the same
    seed: frames float32 ``[T, 3, F, F]``, actions float32 ``[T, 2]`` and the truth per frame."""
    world = World(seed, **world_kwargs)
    if path == "walk":
        cam = random_walk(seed, length, y_max=world.y_max)
    elif path == "revisit":
        cam = revisit(seed, length, y_max=world.y_max, frame=world.frame)
    else:
        raise ValueError(f"path must be 'walk' or 'revisit', got {path!r}")
    frames, truths = world.render(cam)
    return frames, actions(cam), truths
