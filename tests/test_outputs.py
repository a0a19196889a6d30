"""Outputs are atomic: a failure never leaves a file under its final name."""
import json
import os
import stat

import pytest
import torch

from lrag_framework.outputs.media import StreamingVideoWriter
from lrag_framework.files import atomic_path, write_json, write_tensors
from lrag_framework.outputs.media import side_by_side, to_uint8_frames


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "summary.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_keeps_previous_file(tmp_path):
    target = tmp_path / "summary.json"
    write_json(target, {"v": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_concurrent_atomic_writes_never_share_a_temporary_file(tmp_path):
    """Two writers of one target at once (ranks on a shared cache): each gets its own hidden
    temporary file with the target's suffix and the umask's mode (not mkstemp's 0600); the
    last rename wins with a whole file; nothing is left over."""
    target = tmp_path / "shared.json"
    umask = os.umask(0o022)
    try:
        with atomic_path(target) as a, atomic_path(target) as b:
            assert a != b and a.parent == b.parent == tmp_path
            assert a.name.startswith(".") and a.suffix == b.suffix == ".json"
            assert stat.S_IMODE(a.stat().st_mode) == 0o644
            a.write_text('{"writer": "a"}')
            b.write_text('{"writer": "b"}')
    finally:
        os.umask(umask)
    assert json.loads(target.read_text()) == {"writer": "a"}  # a's block closed last
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]


def test_mp4_is_playable_h264(tmp_path):
    av = pytest.importorskip("av")
    frames = to_uint8_frames(torch.rand(10, 3, 16, 16) * 2 - 1, scale=2)
    with StreamingVideoWriter(tmp_path / "v.mp4", fps=8) as writer:
        writer.append(side_by_side(frames, frames))
    with av.open(str(tmp_path / "v.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == 10 and decoded[0].shape == (32, 68, 3)


def test_tensors_round_trip_with_metadata(tmp_path):
    from safetensors import safe_open

    x = torch.randn(2, 3)
    write_tensors(tmp_path / "l.safetensors", {"latents": x}, {"streams": [1, 2]})
    with safe_open(str(tmp_path / "l.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("latents"), x)
        assert json.loads(f.metadata()["streams"]) == [1, 2]


def test_safetensors_bytes_do_not_depend_on_metadata_order(tmp_path):
    """Same tensors and metadata, same file bytes (safetensors writes its header in hash
    order; the header is rewritten sorted), whatever order the dicts were built in."""
    import struct

    from lrag_framework.files import tensor_bytes

    tensors = {f"t{i}": torch.full((2, i + 1), float(i)) for i in range(8)}
    meta = {f"key_{i}": [i, str(i)] for i in range(12)}
    a = tensor_bytes(tensors, meta)
    b = tensor_bytes(dict(reversed(tensors.items())), dict(reversed(meta.items())))
    assert a == b
    (n,) = struct.unpack("<Q", a[:8])
    header = json.loads(a[8:8 + n])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted(meta)
    write_tensors(tmp_path / "a.safetensors", tensors, meta)
    assert (tmp_path / "a.safetensors").read_bytes() == a


def test_read_jsonl_skips_a_torn_last_line(tmp_path):
    from lrag_framework.files import append_jsonl, read_jsonl

    log = tmp_path / "metrics.jsonl"
    append_jsonl(log, {"step": 1})
    append_jsonl(log, {"step": 2})
    with log.open("a") as f:
        f.write('{"step": 3, "tot')  # the process died mid-write
    assert read_jsonl(log) == [{"step": 1}, {"step": 2}]
