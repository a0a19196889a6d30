"""The procedural world with ground truth that the tiny default backbone learns (docs/world.md)."""
from .generator import COLOURS, PATTERNS, SHAPES, Subject, World, make_clip
from .paths import ACTION_DIM, ACTION_SCALE, actions, path_from_actions, random_walk, revisit
from .truth import (SAME_PLACE_OVERLAP, FrameTruth, SubjectBox, overlap, overlap_matrix,
                    same_place)

__all__ = [
    "ACTION_DIM", "ACTION_SCALE", "COLOURS", "PATTERNS", "SAME_PLACE_OVERLAP", "SHAPES",
    "FrameTruth", "Subject", "SubjectBox", "World", "actions", "make_clip", "overlap",
    "overlap_matrix", "path_from_actions", "random_walk", "revisit", "same_place",
]
