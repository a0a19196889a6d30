"""Ground truth of rendered frames and the overlap between what two frames show.

A frame at camera position ``(x, y)`` shows the panorama pixels ``rows y..y+F-1`` and columns
``x..x+F-1`` (modulo the panorama width, which wraps). The overlap of two frames is the fraction
of the frame area showing the same panorama pixels: ``ox * oy`` with ``ox = max(0, F - dx) / F``
for the circular horizontal distance ``dx`` and ``oy = max(0, F - |ya - yb|) / F``. Moving subjects
are not counted: overlap is about places. Two frames show the *same place* when overlap >= 0.5.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SAME_PLACE_OVERLAP = 0.5


@dataclass(frozen=True)
class SubjectBox:
    """A subject seen in a frame: its box in frame pixels (half-open, clipped to the frame)."""

    subject: int  # index into World.subjects
    x0: int
    y0: int
    x1: int
    y1: int
    fraction: float  # share of the subject's pixels inside the frame (occlusion not counted)


@dataclass(frozen=True)
class FrameTruth:
    """What one frame shows: camera position in the panorama and the subjects in view."""

    t: int  # frame time (moving subjects follow it)
    x: int  # left column in the wrapping panorama, 0 <= x < width
    y: int  # top row in the panorama
    width: int  # panorama width in pixels
    frame: int  # frame side in pixels
    subjects: tuple[SubjectBox, ...] = ()

    def visible(self, subject: int) -> SubjectBox | None:
        """The box of ``subject`` if it is in view."""
        return next((b for b in self.subjects if b.subject == subject), None)


def _geometry(truths: Sequence[FrameTruth], what: str) -> tuple[np.ndarray, np.ndarray, int, int]:
    if len(truths) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), -1, -1
    sizes = {(t.width, t.frame) for t in truths}
    if len(sizes) != 1:
        raise ValueError(f"{what}: truths come from worlds of different (width, frame) "
                         f"{sorted(sizes)}")
    (width, frame), = sizes
    x = np.fromiter((t.x for t in truths), np.int64, len(truths))
    y = np.fromiter((t.y for t in truths), np.int64, len(truths))
    return x, y, width, frame


def overlap_matrix(truths_a: Sequence[FrameTruth], truths_b: Sequence[FrameTruth]) -> np.ndarray:
    """Overlap fraction of every pair: float64 ``[Ta, Tb]`` in [0, 1]."""
    xa, ya, wa, fa = _geometry(truths_a, "overlap_matrix(truths_a)")
    xb, yb, wb, fb = _geometry(truths_b, "overlap_matrix(truths_b)")
    if len(xa) == 0 or len(xb) == 0:
        return np.zeros((len(xa), len(xb)))
    if (wa, fa) != (wb, fb):
        raise ValueError(f"overlap_matrix: (width, frame) differ: {(wa, fa)} vs {(wb, fb)}")
    dx = np.abs(xa[:, None] - xb[None, :]) % wa  # [Ta, Tb]
    dx = np.minimum(dx, wa - dx)
    dy = np.abs(ya[:, None] - yb[None, :])
    ox = np.clip(fa - dx, 0, None) / fa
    oy = np.clip(fa - dy, 0, None) / fa
    return ox * oy


def overlap(truth_a: FrameTruth, truth_b: FrameTruth) -> float:
    """Fraction of the frame area where both frames show the same panorama pixels."""
    return float(overlap_matrix([truth_a], [truth_b])[0, 0])


def same_place(truth_a: FrameTruth, truth_b: FrameTruth) -> bool:
    """Overlap >= ``SAME_PLACE_OVERLAP`` (0.5)."""
    return overlap(truth_a, truth_b) >= SAME_PLACE_OVERLAP
