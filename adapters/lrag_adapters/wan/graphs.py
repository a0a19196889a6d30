"""CUDA graphs over the DiT's passes (``cuda_graphs: true``): one launch per pass instead of ~900.

A pass of the 1.3B DiT launches about 880 kernels (30 layers of norms, projections, attention,
FFN); between them the GPU idles a few microseconds each. A CUDA graph records a pass once and
replays it with one launch. Its inputs must sit at fixed addresses, so the graph is built for a
context shape only once that shape comes back: from then on the backbone prepares that shape's
context straight into this module's buffers (``context_buffers``), the small inputs (block
latents, timesteps, RoPE tables, mask, text K/V) are copied into the graph's own before each
replay, and the outputs are cloned out, so a later replay cannot overwrite a result still in use.
The first blocks of a run, whose context still grows, run eagerly; in the steady state every
block has the same shape and replays. Replays run the same kernels as the eager pass, on the same
inputs, so the outputs are the same (``tests/test_wan_graphs.py`` checks it on CUDA).

Memory: one context buffer pair per kept shape (``keep`` shapes, default one: the steady state's;
the least recently used is dropped with its graphs) and one pool for the graphs' activations,
shared by all of them; ``WanBackbone.memory_estimate`` counts both.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: list[Tensor | None]  # static copies of the small inputs, in the pass's order
    out: Tensor


class GraphedPasses:
    """Calls ``model(x, t, rope, k_buf, v_buf, mask, cross, return_kv)``, replaying a captured
    CUDA graph when ``k_buf`` is one of this module's context buffers."""

    def __init__(self, model: nn.Module, keep: int = 1):
        self.model, self.keep = model, keep
        self.seen: set[tuple] = set()  # context shapes prepared at least once
        self.buffers: OrderedDict[tuple, tuple[Tensor, Tensor]] = OrderedDict()
        self.graphs: dict[tuple, _Graph] = {}
        self.pool = None
        self.captures = 0  # graphs recorded so far (tests, benchmarks)

    def context_buffers(self, shape: tuple, dtype: torch.dtype, device: torch.device
                        ) -> tuple[Tensor, Tensor]:
        """K and V buffers [L, B, S, Hh, Dh] for a block's context: fresh the first time a shape
        is seen, this module's persistent pair (graphed passes) from the second time on."""
        shape = tuple(shape)
        if shape not in self.seen:
            self.seen.add(shape)
            k = torch.empty(shape, device=device, dtype=dtype)
            return k, torch.empty_like(k)
        if shape not in self.buffers:
            while len(self.buffers) >= self.keep:
                self._drop(next(iter(self.buffers)))
            k = torch.empty(shape, device=device, dtype=dtype)
            self.buffers[shape] = (k, torch.empty_like(k))
        self.buffers.move_to_end(shape)
        return self.buffers[shape]

    def __call__(self, x: Tensor, t: Tensor, rope: tuple[Tensor, Tensor], k_buf: Tensor,
                 v_buf: Tensor, mask: Tensor | None, cross: Tensor, return_kv: bool) -> Tensor:
        shape = tuple(k_buf.shape)
        own = self.buffers.get(shape)
        if own is None or own[0] is not k_buf or own[1] is not v_buf:
            return self.model(x, t, rope, k_buf, v_buf, mask, cross, return_kv)
        small = [x, t, *rope, mask, cross]
        key = (shape, return_kv, *(None if s is None else (tuple(s.shape), s.dtype)
                                   for s in small))
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(small, k_buf, v_buf, return_kv)
        else:
            for static, value in zip(entry.inputs, small):
                if static is not None:
                    static.copy_(value)
        entry.graph.replay()
        return entry.out.clone()

    def _capture(self, small: list[Tensor | None], k_buf: Tensor, v_buf: Tensor,
                 return_kv: bool) -> _Graph:
        inputs = [None if s is None else s.clone() for s in small]
        x, t, cos, sin, mask, cross = inputs
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                out = self.model(x, t, (cos, sin), k_buf, v_buf, mask, cross, return_kv)
        except RuntimeError as err:  # e.g. a kernel that cannot be captured on this setup
            raise RuntimeError(f"wan: capturing a DiT pass as a CUDA graph failed "
                               f"({str(err).splitlines()[0]}); run it eagerly with "
                               f"backbone.params.cuda_graphs: false") from err
        self.captures += 1
        return _Graph(graph, inputs, out)

    def _drop(self, shape: tuple) -> None:
        del self.buffers[shape]
        for key in [k for k in self.graphs if k[0] == shape]:
            del self.graphs[key]
        if not self.graphs:  # the pool went with its last graph: capturing into it would fail
            self.pool = None
