"""The frame rate reaches imageio-ffmpeg as an exact rational, and the dependency bound admits
only versions that accept one (0.5 and 0.6 raise ``AssertionError: fps must be float``)."""
import re
from fractions import Fraction
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from lrag_framework.outputs.media import StreamingVideoWriter

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def as_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:2])


def test_bound_admits_only_versions_that_take_a_fraction():
    bound = re.search(r'"imageio-ffmpeg>=([\d.]+)"', PYPROJECT.read_text())
    assert bound, "pyproject declares imageio-ffmpeg with a lower bound"
    assert as_tuple(bound.group(1)) >= (0, 7)
    assert as_tuple(version("imageio-ffmpeg")) >= as_tuple(bound.group(1))


def test_ntsc_rate_is_passed_and_written_exactly(tmp_path, monkeypatch):
    seen = []
    real = imageio_ffmpeg.write_frames

    def spy(*args, **kwargs):
        seen.append(kwargs["fps"])
        return real(*args, **kwargs)

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", spy)
    frames = np.zeros((12, 16, 16, 3), np.uint8)
    with StreamingVideoWriter(tmp_path / "ntsc.mp4", 30000 / 1001) as w:
        w.append(frames)
    assert seen == [Fraction(30000, 1001)]
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "ntsc.mp4"))
    meta = next(reader)
    reader.close()
    assert meta["fps"] == pytest.approx(30000 / 1001, abs=1e-2)
