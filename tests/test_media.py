"""Streaming mp4 writer (partial name, playable while growing) and image/video readers."""
import time

import numpy as np
import pytest
import torch
from PIL import Image

from lrag_framework.files import partial_name
from lrag_framework.outputs.media import (StreamingVideoWriter, read_image, read_video,
                                          side_by_side_files)

av = pytest.importorskip("av")  # an independent decoder for checking what we write

FPS = 8  # keyframe every 8 frames at the default keyframe_seconds=1


def smooth_frames(t: int, h: int = 32, w: int = 48, start: int = 0) -> np.ndarray:
    """Slowly moving gradients: uint8 [t, h, w, 3], easy on h264 (no scene cuts)."""
    y, x = np.mgrid[:h, :w]
    frames = [np.stack([(x * 3 + 2 * i) % 256, y * 5, np.full_like(x, 120)], -1)
              for i in range(start, start + t)]
    return np.stack(frames).astype(np.uint8)


def decode(path) -> np.ndarray:
    """Every frame PyAV can decode from ``path`` (a growing file may end mid-fragment)."""
    frames = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
    except av.FFmpegError:
        pass
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def write(path, frames, fps=FPS) -> None:
    with StreamingVideoWriter(path, fps) as writer:
        writer.append(frames)


def test_streaming_write_appears_only_on_close(tmp_path):
    target = tmp_path / "run.mp4"
    frames = smooth_frames(15)
    with StreamingVideoWriter(target, FPS) as writer:
        for block in np.split(frames, 3):
            writer.append(block)
            assert not target.exists()
        assert writer.frames_written == 15
    assert [p.name for p in tmp_path.iterdir()] == ["run.mp4"]
    out = decode(target)
    assert out.shape == (15, 32, 48, 3)
    assert np.abs(out.astype(float) - frames).mean() < 3.0


def test_odd_sizes_are_cropped_to_even(tmp_path):
    frames = smooth_frames(4, h=33, w=49)
    write(tmp_path / "odd.mp4", frames)
    out = decode(tmp_path / "odd.mp4")
    assert out.shape == (4, 32, 48, 3)
    assert np.abs(out.astype(float) - frames[:, :32, :48]).mean() < 3.0


def test_partial_file_plays_while_growing(tmp_path):
    """The ffmpeg process writes asynchronously behind a pipe: poll (bounded) until the two
    fragments closed by the keyframe at frame 16 are on disk; the third stays open."""
    target = tmp_path / "live.mp4"
    with StreamingVideoWriter(target, FPS, keyframe_seconds=1.0) as writer:
        writer.append(smooth_frames(3 * FPS))
        deadline = time.monotonic() + 15
        while (n := decode(partial_name(target)).shape[0]) < 2 * FPS \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert n == 2 * FPS
    assert decode(target).shape[0] == 3 * FPS


def test_exception_keeps_playable_partial_and_no_final(tmp_path):
    target = tmp_path / "crash.mp4"
    with pytest.raises(RuntimeError, match="boom"), \
            StreamingVideoWriter(target, FPS) as writer:
        writer.append(smooth_frames(12))
        raise RuntimeError("boom")
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["crash.partial.mp4"]
    assert decode(partial_name(target)).shape == (12, 32, 48, 3)  # nothing lost


def test_exception_before_any_frame_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), StreamingVideoWriter(tmp_path / "v.mp4", FPS):
        raise RuntimeError("early")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no frames"):
        StreamingVideoWriter(tmp_path / "v.mp4", FPS).close()


def test_writer_rejects_bad_input(tmp_path):
    for kwargs, match in [({"path": tmp_path / "v.avi"}, "mp4"), ({"fps": 0}, "fps"),
                          ({"keyframe_seconds": -1}, "keyframe"), ({"crf": 60}, "crf")]:
        with pytest.raises(ValueError, match=match):
            StreamingVideoWriter(**{"path": tmp_path / "v.mp4", "fps": FPS, **kwargs})
    with pytest.raises(ValueError, match="differs"), \
            StreamingVideoWriter(tmp_path / "v.mp4", FPS) as writer:
        writer.append(smooth_frames(2))
        writer.append(smooth_frames(2, h=16))
    good = smooth_frames(2)
    for bad in [good.astype(np.float32), good[0], good[..., :2]]:
        with pytest.raises(ValueError, match="uint8"):
            StreamingVideoWriter(tmp_path / "w.mp4", FPS).append(bad)


def test_read_image_cover_resize_and_centre_crop(tmp_path):
    # 40x120 source: red ramps along x, green along y, blue marks 24 px borders left and right.
    y, x = np.mgrid[:40, :120]
    blue = np.where((x < 24) | (x >= 96), 255, 0)
    Image.fromarray(np.stack([2 * x, 4 * y, blue], -1).astype(np.uint8)).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png", (20, 30))
    assert img.shape == (3, 20, 30) and img.dtype == torch.float32
    assert img.min() >= -1 and img.max() <= 1
    px = (img + 1) * 127.5
    assert px[2].max() < 2  # the border was cropped away
    # Scale 1/2 on both axes (cover), crop from source x = 30: output j <- source 30 + 2j + 0.5.
    j, i = torch.arange(3, 27).float(), torch.arange(3, 17).float()
    assert torch.allclose(px[0, 10, 3:27], 2 * (30 + 2 * j + 0.5), atol=1.5)
    assert torch.allclose(px[1, 3:17, 15], 4 * (2 * i + 0.5), atol=1.5)


def test_read_image_tall_source_crops_top_and_bottom(tmp_path):
    a = np.zeros((100, 20, 3), np.uint8)
    a[:20], a[20:80], a[80:] = (0, 0, 255), (255, 0, 0), (0, 0, 255)
    Image.fromarray(a).save(tmp_path / "tall.png")
    px = (read_image(tmp_path / "tall.png", (8, 8)) + 1) * 127.5  # the 20x20 centre: red
    assert torch.allclose(px, torch.tensor([255.0, 0, 0])[:, None, None].expand(3, 8, 8), atol=2)


@pytest.mark.parametrize("mode, value", [("L", 200), ("RGBA", (200, 200, 200, 90)),
                                         ("P", 3)])
def test_read_image_makes_rgb(tmp_path, mode, value):
    Image.new(mode, (10, 6), value).save(tmp_path / "m.png")
    img = read_image(tmp_path / "m.png", (4, 4))
    assert img.shape == (3, 4, 4)
    assert torch.allclose(img[0], img[1]) and torch.allclose(img[1], img[2])


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png", (4, 4))
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="text.png"):
        read_image(tmp_path / "text.png", (4, 4))
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    for bad in [(0, 4), (4,), (4.0, 4), "44", (-1, 3), (True, 2)]:
        with pytest.raises(ValueError, match="size"):
            read_image(tmp_path / "ok.png", bad)


def test_read_video_round_trip_and_prefix(tmp_path):
    frames = smooth_frames(10)
    write(tmp_path / "v.mp4", frames)
    video = read_video(tmp_path / "v.mp4", (32, 48))
    assert video.shape == (10, 3, 32, 48)
    expected = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert (video - expected).abs().mean() < 0.03
    head = read_video(tmp_path / "v.mp4", (32, 48), max_frames=3)
    assert torch.equal(head, video[:3])
    assert read_video(tmp_path / "v.mp4", (16, 16), max_frames=20).shape == \
        (10, 3, 16, 16)


def test_read_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(tmp_path / "nope.mp4", (8, 8))
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "zero.mp4").write_bytes(b"")
    with av.open(str(tmp_path / "header_only.mp4"), "w") as container:  # no frames at all
        stream = container.add_stream("libx264", rate=FPS)
        stream.width = stream.height = 16
        container.start_encoding()
    for name in ["text.mp4", "zero.mp4", "header_only.mp4"]:
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            read_video(tmp_path / name, (8, 8))
    write(tmp_path / "ok.mp4", smooth_frames(2))
    for bad in [0, -2, 1.5]:
        with pytest.raises(ValueError, match="max_frames"):
            read_video(tmp_path / "ok.mp4", (8, 8), max_frames=bad)


def test_side_by_side_files(tmp_path):
    a, b = smooth_frames(10), smooth_frames(6, h=24, w=32, start=5)
    write(tmp_path / "a.mp4", a)
    write(tmp_path / "b.mp4", b)
    n = side_by_side_files([tmp_path / "a.mp4", tmp_path / "b.mp4"], tmp_path / "ab.mp4")
    out = decode(tmp_path / "ab.mp4")
    assert n == 6 and out.shape == (6, 32, 48 + 4 + 32, 3)
    assert out[:, :, 49:51].min() > 200  # white gap (inner columns: h264 blurs its edges)
    assert np.abs(out[:, :, :48].astype(float) - a[:6]).mean() < 5.0
    assert np.abs(out[:, :24, 52:].astype(float) - b).mean() < 5.0
    with pytest.raises(ValueError, match="at least 2"):
        side_by_side_files([tmp_path / "a.mp4"], tmp_path / "x.mp4")


def test_side_by_side_files_labels_each_half(tmp_path):
    a, b = smooth_frames(4, h=32, w=64), smooth_frames(4, h=32, w=64, start=3)
    write(tmp_path / "a.mp4", a)
    write(tmp_path / "b.mp4", b)
    side_by_side_files([tmp_path / "a.mp4", tmp_path / "b.mp4"], tmp_path / "ab.mp4",
                       labels=["native", "retrieval"])
    out = decode(tmp_path / "ab.mp4")
    assert out.shape == (4, 18 + 32, 64 + 4 + 64, 3)  # a caption strip above the videos
    strip = out[0, :18].astype(float).mean(-1)
    for half in (strip[:, :64], strip[:, 68:]):
        assert half.min() < 100 and np.median(half) > 200  # dark text on white, in each half
    assert np.abs(out[:, 18:, :64].astype(float) - a).mean() < 5.0
    with pytest.raises(ValueError, match="labels"):
        side_by_side_files([tmp_path / "a.mp4", tmp_path / "b.mp4"], tmp_path / "x.mp4",
                           labels=["one"])
