"""What a run needs in memory, and the ``memory.budget_gb: auto`` rule built on it.

``estimate`` is the one estimator of a run's memory: the history K/V pool and the output latents
from their exact sizes, weights and activations from the backbone's own estimate
(``Backbone.memory_estimate``). It answers device bytes and host bytes for a choice of K/V
storage and tier.

The ``auto`` rule decides from the machine's total capacity, never from what happens to be free
(so the same config resolves the same way on the same machine): a run may plan for
``DEVICE_SHARE`` of the compute device's total memory and pin ``HOST_SHARE`` of the host's
physical memory. It tries, in order, (the backbone's dtype, device pool), (float8, device pool),
(the backbone's dtype, pinned host pool), (float8, pinned host pool), keeping only the choices
that agree with an explicitly set ``memory.storage`` / ``memory.tier``, and takes the first where
every frame of the requested length keeps its K/V. The budget is then exactly that pool. If none
fits, the run is refused before anything is generated, with every candidate's need.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from ..interfaces import Backbone
from .memory import MemoryBudgetError, frame_bytes

DEVICE_SHARE = 0.9  # of the compute device's total memory
HOST_SHARE = 0.5  # of the host's physical memory, for a page-locked K/V pool
GIB = 2 ** 30


@dataclass(frozen=True)
class MemoryEstimate:
    device_bytes: int
    host_bytes: int
    parts: dict  # name -> bytes: kv_pool, kv_ring, latents, backbone


def estimate(backbone: Backbone, streams: int, num_frames: int, storage: str = "auto",
             tier: str = "auto", kv_frames: int | None = None, ring_frames: int = 0,
             device: torch.device | str = "cpu") -> MemoryEstimate:
    """Bytes a run of ``streams`` x ``num_frames`` latent frames needs on the compute device and
    on the host, with ``kv_frames`` frames of history K/V (default: all) stored as ``storage`` on
    ``tier`` (``cpu``, or any tier with ``float8``: plus a device ring of ``ring_frames`` frames
    in the backbone's dtype)."""
    spec = backbone.spec
    per_frame = frame_bytes(spec, streams, storage)
    pool = (num_frames if kv_frames is None else kv_frames) * per_frame
    latents = streams * num_frames * math.prod(spec.latent_shape) * 4  # float32 output
    ring = ring_frames * frame_bytes(spec, streams) if tier == "cpu" or storage == "float8" else 0
    parts = {"kv_pool": pool, "kv_ring": ring,
             "latents": latents, "backbone": int(backbone.memory_estimate(streams, num_frames))}
    on_device = parts["backbone"] + latents + parts["kv_ring"] + (pool if tier != "cpu" else 0)
    on_host = latents + (pool if tier == "cpu" else 0)  # the latents come back to the host
    if torch.device(device).type == "cpu":  # one memory
        on_device, on_host = on_device + on_host, 0
    return MemoryEstimate(on_device, on_host, parts)


def capacities(device: torch.device | str) -> tuple[int, int]:
    """Total bytes of the compute device and of the host's physical memory."""
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, host
    return host, host


@dataclass(frozen=True)
class Resolved:
    budget_gb: float
    storage: str
    tier: str
    rule: dict  # the inputs and the need of the chosen candidate, for the summary


def resolve_auto(backbone: Backbone, streams: int, num_frames: int, ring_frames: int,
                 device: torch.device | str, storage: str | None = None,
                 tier: str | None = None, totals: tuple[int, int] | None = None) -> Resolved:
    """The ``budget_gb: auto`` choice (see the module docstring); ``storage``/``tier`` None:
    free to choose, else fixed. ``totals``: (device, host) bytes, default the machine's."""
    dev_total, host_total = totals or capacities(device)
    cpu = torch.device(device).type == "cpu"
    dev_cap = (HOST_SHARE if cpu else DEVICE_SHARE) * dev_total
    host_cap = HOST_SHARE * host_total
    tried = []
    for t in ("auto", "cpu"):
        for s in ("auto", "float8"):
            if (storage is not None and s != storage) or (tier is not None and t != tier):
                continue
            need = estimate(backbone, streams, num_frames, s, t, ring_frames=ring_frames,
                            device=device)
            tried.append(f"storage {s}, tier {t}: {need.device_bytes / GIB:.1f} GiB device + "
                         f"{need.host_bytes / GIB:.1f} GiB host")
            if need.device_bytes <= dev_cap and need.host_bytes <= host_cap:
                rule = {"device_total_gb": round(dev_total / GIB, 2),
                        "host_total_gb": round(host_total / GIB, 2),
                        "device_share": DEVICE_SHARE if not cpu else HOST_SHARE,
                        "host_share": HOST_SHARE,
                        "need_device_gb": round(need.device_bytes / GIB, 2),
                        "need_host_gb": round(need.host_bytes / GIB, 2)}
                budget = math.ceil(need.parts["kv_pool"] / GIB * 1000) / 1000  # never short
                return Resolved(budget, s, t, rule)
    raise MemoryBudgetError(
        f"memory.budget_gb auto: {num_frames} frames x {streams} streams do not fit with every "
        f"frame's K/V ({'; '.join(tried)}; plannable: {dev_cap / GIB:.1f} GiB device, "
        f"{host_cap / GIB:.1f} GiB host): generate fewer frames or streams, or set a numeric "
        f"budget_gb with a memory.policy that drops K/V")


def resolve_memory(cfg, backbone: Backbone, streams: int, min_frames: int, sink: int,
                   device: torch.device | str, totals: tuple[int, int] | None = None):
    """A run config with ``memory.budget_gb: auto`` resolved (storage, tier, budget), and what
    the rule saw and chose (None when the budget was given)."""
    m = cfg.memory
    if m.budget_gb != "auto":
        return cfg, None
    fixed = m.model_fields_set
    r = resolve_auto(backbone, streams, cfg.generation.num_frames, sink + min_frames, device,
                     m.storage if "storage" in fixed else None,
                     m.tier if "tier" in fixed else None, totals)
    memory = m.model_copy(update={"budget_gb": r.budget_gb, "storage": r.storage,
                                  "tier": r.tier})
    memory.__pydantic_fields_set__ = set(m.model_fields_set) | {"budget_gb"}
    summary = {"requested": {"budget_gb": "auto", **{k: getattr(m, k) for k in ("storage", "tier")
                                                      if k in fixed}},
               "resolved": {"budget_gb": r.budget_gb, "storage": r.storage, "tier": r.tier},
               "rule": r.rule}
    return cfg.model_copy(update={"memory": memory}), summary
