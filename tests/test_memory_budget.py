"""The memory estimator and the ``budget_gb: auto`` rule: candidates in order, explicit settings
win, a length that cannot fit is refused up front, resolved values recorded by the run."""
import pytest
import yaml

import lrag_framework
from lrag_adapters.tiny.backbone import TinyBackbone
from lrag_adapters.tiny.params import TinyParams
from lrag_framework.config import RunConfig
from lrag_framework.generation.budget import estimate, resolve_auto, resolve_memory
from lrag_framework.generation.memory import MemoryBudgetError, frame_bytes

GIB = 2 ** 30


class Sized(TinyBackbone):
    """A tiny backbone that claims a fixed footprint of its own."""

    def memory_estimate(self, streams, num_frames):
        return 2 * GIB


@pytest.fixture(scope="module")
def bb():
    return Sized(TinyParams(height=16, width=16, patch=4, dim=32, layers=2, heads=2,
                            weights=None))


def test_estimate_counts_pool_latents_and_the_backbone(bb):
    full = frame_bytes(bb.spec, 2, "auto")
    e = estimate(bb, 2, 100, device="cuda")
    assert e.parts["kv_pool"] == 100 * full and e.parts["backbone"] == 2 * GIB
    assert e.device_bytes == 2 * GIB + 100 * full + e.parts["latents"]
    host = estimate(bb, 2, 100, "float8", "cpu", ring_frames=13, device="cuda")
    assert host.host_bytes == 100 * frame_bytes(bb.spec, 2, "float8") + host.parts["latents"]
    assert host.parts["kv_ring"] == 13 * full  # the ring holds the backbone's dtype
    device_fp8 = estimate(bb, 2, 100, "float8", ring_frames=13, device="cuda")
    assert device_fp8.device_bytes == (2 * GIB + 100 * frame_bytes(bb.spec, 2, "float8")
                                       + 13 * full + device_fp8.parts["latents"])
    assert estimate(bb, 2, 100, device="cpu").host_bytes == 0  # one memory on the CPU


def need(bb, storage, tier, frames=4000):
    return estimate(bb, 1, frames, storage, tier, ring_frames=13, device="cuda")


def totals(device_bytes, host_bytes):
    """Machine totals under which exactly ``device_bytes`` / ``host_bytes`` are plannable."""
    return int((device_bytes + 4096) / 0.9), int((host_bytes + 4096) / 0.5)


def test_auto_rule_prefers_full_precision_on_device_then_float8_then_host(bb):
    host = need(bb, "auto", "cpu").host_bytes
    t = totals(need(bb, "auto", "auto").device_bytes, host)
    r = resolve_auto(bb, 1, 4000, 13, "cuda", totals=t)
    assert (r.storage, r.tier) == ("auto", "auto")
    assert r.budget_gb * GIB >= 4000 * frame_bytes(bb.spec, 1)  # every frame keeps its K/V
    t = totals(need(bb, "float8", "auto").device_bytes, host)
    r = resolve_auto(bb, 1, 4000, 13, "cuda", totals=t)
    assert (r.storage, r.tier) == ("float8", "auto")
    t = totals(need(bb, "auto", "cpu").device_bytes, host)
    assert need(bb, "float8", "auto").device_bytes > 0.9 * t[0]  # no device pool fits
    r = resolve_auto(bb, 1, 4000, 13, "cuda", totals=t)
    assert (r.storage, r.tier) == ("auto", "cpu")
    assert r.rule["device_total_gb"] == round(t[0] / GIB, 2)
    t = totals(need(bb, "auto", "cpu").device_bytes, need(bb, "float8", "cpu").host_bytes)
    r = resolve_auto(bb, 1, 4000, 13, "cuda", totals=t)
    assert (r.storage, r.tier) == ("float8", "cpu")


def test_explicit_storage_or_tier_wins(bb):
    t = totals(need(bb, "float8", "auto").device_bytes, need(bb, "auto", "cpu").host_bytes)
    r = resolve_auto(bb, 1, 4000, 13, "cuda", storage="auto", totals=t)
    assert (r.storage, r.tier) == ("auto", "cpu")  # bf16 kept: the pool moves to the host
    r = resolve_auto(bb, 1, 4000, 13, "cuda", tier="cpu", totals=(10 ** 15, 10 ** 15))
    assert r.tier == "cpu"


def test_a_length_that_cannot_fit_is_refused_with_every_candidate(bb):
    with pytest.raises(MemoryBudgetError, match=r"4000 frames x 1 streams do not fit.*"
                       r"storage float8, tier cpu"):
        resolve_auto(bb, 1, 4000, 13, "cuda", totals=totals(
            need(bb, "auto", "cpu").device_bytes, need(bb, "float8", "cpu").host_bytes - 8192))


def test_resolve_memory_keeps_a_numeric_budget_and_resolves_auto(bb):
    cfg = RunConfig.model_validate({"generation": {"num_frames": 30}})
    assert resolve_memory(cfg, bb, 1, 12, 1, "cpu") == (cfg, None)
    cfg = RunConfig.model_validate({"generation": {"num_frames": 30},
                                    "memory": {"budget_gb": "auto", "storage": "float8"}})
    out, summary = resolve_memory(cfg, bb, 1, 12, 1, "cuda", totals=(100 * GIB, 100 * GIB))
    assert (out.memory.storage, out.memory.tier) == ("float8", "auto")
    assert out.memory.budget_gb * GIB >= 30 * frame_bytes(bb.spec, 1, "float8")
    assert summary["requested"] == {"budget_gb": "auto", "storage": "float8"}
    with pytest.raises(MemoryBudgetError):
        resolve_memory(cfg, bb, 1, 12, 1, "cuda", totals=(GIB, GIB))


def test_run_with_auto_budget_records_the_choice_and_keeps_every_frame(tmp_path):
    cfg = {"backbone": {"name": "tiny", "params": {"height": 16, "width": 16, "patch": 4,
                                                    "dim": 32, "layers": 2, "heads": 2,
                                                    "weights": None}},
           "generation": {"num_frames": 30, "batch_size": 1},
           "memory": {"budget_gb": "auto"}, "device": "cpu",
           "output": {"root": str(tmp_path), "video": False, "save_latents": False}}
    result = lrag_framework.run(cfg)
    written = yaml.safe_load((result.run_dir / "config.yaml").read_text())["memory"]
    resolved = result.summary["memory_resolved"]["resolved"]
    assert written["budget_gb"] == resolved["budget_gb"] and written["tier"] == resolved["tier"]
    mode = result.summary["modes"]["retrieval"]
    assert mode["memory"]["kv_dropped_frames"] == 0
    assert mode["memory"]["kv_capacity_frames"] == 30
