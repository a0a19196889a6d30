"""The block loop against an independent sliding-window loop, determinism, prefixes, memory."""
import pytest
import torch
import torch.nn.functional as F

from lrag_adapters.tiny.backbone import TinyBackbone
from lrag_adapters.tiny.params import TinyParams
from lrag_framework.generation.engine import Engine, EngineOptions, stream_generator
from lrag_framework.interfaces import Context, Embedder, Retriever, SearchResult
from lrag_framework.generation.memory import KVMemory, MemoryBudgetError, frame_bytes
from lrag_framework.generation.plan import Geometry


class MeanEmbedder(Embedder):
    def embed(self, latents):
        return F.normalize(latents.mean(dim=(2, 3)), dim=-1)


class BruteForce(Retriever):
    """Test double: cosine top-k by sorting a Python list (independent of the real retrievers)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.rows = {}

    def add(self, stream, frame_ids, descriptors):
        for f, d in zip(frame_ids.tolist(), descriptors):
            self.rows.setdefault(stream, {})[f] = d

    def search(self, queries, k, eligible):
        ids = torch.full((len(queries), k), -1)
        scores = torch.full((len(queries), k), float("-inf"))
        counts = torch.zeros(len(queries), dtype=torch.long)
        for s, q in enumerate(queries):
            ranked = sorted(((float(d @ q), f) for f, d in self.rows[s].items()
                             if f < eligible.shape[1] and eligible[s, f]), reverse=True)[:k]
            counts[s] = len(ranked)
            for j, (score, f) in enumerate(ranked):
                ids[s, j], scores[s, j] = f, score
        return SearchResult(ids, scores, counts)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


SMALL = TinyParams(height=16, width=16, patch=4, dim=32, layers=2, heads=2, weights=None)


@pytest.fixture(scope="module")
def backbone():
    return TinyBackbone(SMALL)


def make_engine(backbone, k=2, placement="fill", **opt):
    g = Geometry(block=3, window=9, sink=1, k=k, recency=1, placement=placement)
    return Engine(backbone, MeanEmbedder(), BruteForce(), EngineOptions(g, **opt))


def gens(n=2, seed=0):
    return [stream_generator(seed, s) for s in range(n)]


def sliding_window_reference(backbone, num_frames, window, sink, block, generators):
    """A deliberately simple sliding-window generator: a list of per-frame K/V, no retrieval."""
    spec = backbone.spec
    cond = backbone.encode_conditioning([None] * len(generators), num_frames)
    kv_of, frames = [], []
    for start in range(0, num_frames, block):
        ctx_ids = list(range(min(sink, start)))
        ctx_ids += list(range(max(sink, start - (window - sink - block)), start))
        shift = max(0, start + block - window)
        pos = [f if f < sink else f - shift for f in ctx_ids]
        b = len(generators)
        empty = torch.zeros(spec.num_layers, 2, b, 0, spec.tokens_per_frame, spec.num_heads,
                            spec.head_dim)
        kv = torch.cat([kv_of[f] for f in ctx_ids], dim=3) if ctx_ids else empty
        ctx = Context(kv=kv, frame_ids=torch.tensor([ctx_ids] * b, dtype=torch.long).view(b, -1),
                      positions=torch.tensor([pos] * b, dtype=torch.long).view(b, -1),
                      roles=torch.full((b, len(ctx_ids)), 2),
                      valid=torch.ones(b, len(ctx_ids), dtype=torch.bool), block_start=start,
                      block_positions=torch.tensor([[f - shift for f in
                                                     range(start, start + block)]] * b))
        prepared = backbone.prepare(ctx)
        shape = (block, *spec.latent_shape)
        x = torch.stack([torch.randn(shape, generator=g) for g in generators])
        ts = backbone.timesteps()
        for i, t in enumerate(ts):
            pred = backbone.denoise(x, t.expand(b), cond, prepared)
            t_next = ts[i + 1] if i + 1 < len(ts) else torch.zeros(())
            noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
            x = backbone.sampler_step(x, pred, t, t_next, noise)
        new_kv = backbone.recache(x, cond, prepared)
        kv_of += list(new_kv.split(1, dim=3))
        frames.append(x)
    return torch.cat(frames, dim=1)


@pytest.mark.parametrize("placement", ["reference", "fill", "extend"])
def test_k0_reproduces_plain_sliding_window(backbone, placement):
    engine = make_engine(backbone, k=0, placement=placement)
    cond = backbone.encode_conditioning([None, None], 18)
    out = engine.generate(cond, gens(), 18)
    ref = sliding_window_reference(backbone, 18, window=9, sink=1, block=3, generators=gens())
    torch.testing.assert_close(out.latents, ref, rtol=1e-5, atol=1e-5)


def test_same_seed_same_latents_and_retrieval_changes_output(backbone):
    cond = backbone.encode_conditioning([None, None], 24)
    a = make_engine(backbone).generate(cond, gens(), 24)
    b = make_engine(backbone).generate(cond, gens(), 24)
    assert torch.equal(a.latents, b.latents)
    assert a.log == b.log
    native = make_engine(backbone, k=0).generate(cond, gens(), 24)
    first = min(e["block_start"] for e in a.log if any(e["ids"]))
    # identical noise: frames before the first retrieval are bit-identical to the native run
    assert torch.equal(a.latents[:, :first], native.latents[:, :first])
    assert not torch.allclose(a.latents[:, first:], native.latents[:, first:])


def test_retrieved_ids_are_eligible_and_logged(backbone):
    cond = backbone.encode_conditioning([None, None], 30)
    out = make_engine(backbone, k=3).generate(cond, gens(), 30)
    g = Geometry(block=3, window=9, sink=1, k=3, recency=1)
    assert out.log
    for entry in out.log:
        allowed = set(g.eligible(entry["block_start"], torch.ones(30, dtype=torch.bool))
                      .nonzero().flatten().tolist())
        assert entry["eligible"] == len(allowed)
        for ids, scores in zip(entry["ids"], entry["scores"]):
            assert set(ids) <= allowed and len(ids) == min(3, len(allowed))
            assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("k", [0, 2])
def test_prefix_frames_enter_cache_as_if_generated(backbone, k):
    params = SMALL.model_copy(update={"sampler": "euler"})  # deterministic: no step noise
    bb = TinyBackbone(params)
    cond = bb.encode_conditioning([None, None], 15)
    noise = torch.randn(2, 15, *bb.spec.latent_shape, generator=torch.Generator().manual_seed(1))
    full = make_engine(bb, k=k).generate(cond, gens(), 15, initial_noise=noise)
    cont = make_engine(bb, k=k).generate(cond, gens(), 15, prefix=full.latents[:, :6],
                                         initial_noise=noise)
    assert torch.equal(cont.latents[:, :6], full.latents[:, :6])
    torch.testing.assert_close(cont.latents[:, 6:], full.latents[:, 6:], rtol=1e-4, atol=1e-5)


def test_partial_prefix_block(backbone):
    cond = backbone.encode_conditioning([None, None], 12)
    prefix = torch.rand(2, 4, *backbone.spec.latent_shape) * 2 - 1
    out = make_engine(backbone).generate(cond, gens(), 12, prefix=prefix)
    assert torch.equal(out.latents[:, :4], prefix)
    assert out.latents[:, 4:].abs().sum() > 0


def test_memory_budget(backbone):
    cond = backbone.encode_conditioning([None, None], 30)
    per_frame = make_engine(backbone).backbone.spec
    budget = frame_bytes(per_frame, 2) * 20
    with pytest.raises(MemoryBudgetError, match="budget"):
        make_engine(backbone, budget_bytes=budget, policy="error").generate(cond, gens(), 30)
    out = make_engine(backbone, budget_bytes=budget, policy="drop_oldest").generate(
        cond, gens(), 30)
    assert out.memory["kv_dropped_frames"] > 0 and out.memory["kv_capacity_frames"] == 20
    with pytest.raises(MemoryBudgetError):  # not even the window fits
        make_engine(backbone, budget_bytes=frame_bytes(per_frame, 2) * 5,
                    policy="drop_oldest").generate(cond, gens(), 30)


@pytest.mark.parametrize("num_frames", [25, 37])
def test_a_shorter_last_block_keeps_the_older_window_frames_it_attends_to(backbone, num_frames):
    """The last block (1 frame) sees more old frames than a full block would: the memory must
    not drop them when the block before it reserves its slots (it did, with a tight budget)."""
    per_frame = frame_bytes(backbone.spec, 2)
    engine = make_engine(backbone, k=0, budget_bytes=per_frame * 12, policy="thin")  # 9 + 3
    out = engine.generate(backbone.encode_conditioning([None, None], num_frames), gens(),
                          num_frames)
    assert out.memory["kv_dropped_frames"] > 0 and out.latents.shape[1] == num_frames


def test_conditioning_switch_recaches_window_under_new_conditioning():
    class Recording(TinyBackbone):
        def __init__(self, params):
            super().__init__(params)
            self.recached = []

        def prepare(self, context):
            self.cond_frame, self.start = context.cond_frame, context.block_start
            return super().prepare(context)

        def recache(self, clean, cond, prepared):
            self.recached.append((self.start, clean.shape[1], self.cond_frame))
            return super().recache(clean, cond, prepared)

    bb = Recording(SMALL)
    cond = bb.encode_conditioning([None, None], 18)
    cond.switch_frames = (12,)
    out = make_engine(bb).generate(cond, gens(), 18)
    # block [12, 15): sink 0 and the cached frames 7..11 are recached under frame 12's conditioning
    switch = [r for r in bb.recached if r[2] == 12]
    assert switch == [(0, 1, 12), (7, 3, 12), (10, 2, 12)]
    assert [r[0] for r in bb.recached if r[2] is None] == [0, 3, 6, 9, 12, 15]
    assert out.latents.shape[1] == 18


def test_float8_storage_halves_bytes_and_keeps_the_context():
    from lrag_framework.generation.memory import KVMemory, frame_bytes

    spec = TinyBackbone(SMALL).spec
    assert frame_bytes(spec, 2, "float8") < frame_bytes(spec, 2) / 3  # fp32 -> fp8 + scales
    memory = KVMemory(spec, 2, 12, 6, 2 ** 30, "error", torch.device("cpu"), storage="float8")
    shape = (spec.num_layers, 2, 2, 3, spec.tokens_per_frame, spec.num_heads, spec.head_dim)
    kv = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    kv[:, 0] *= 0.01  # K and V of very different magnitudes: per-frame scales keep both
    kv[:, 1] *= 100.0
    memory.write(0, kv, droppable_below=0, keep=0)
    recent = memory.gather(torch.tensor([[0, 1, 2], [2, 1, 0]]), start=3)
    assert torch.equal(recent[:, :, 0], kv[:, :, 0])  # the local window: exact, from the ring
    back = memory.gather(torch.tensor([[0, 1, 2], [2, 1, 0]]), start=12)  # history: float8
    assert not torch.equal(back[:, :, 0], kv[:, :, 0])
    for which, size in ((0, 0.01), (1, 100.0)):  # e4m3: 3 mantissa bits -> relative error <= 1/16
        torch.testing.assert_close(back[:, which, 0], kv[:, which, 0], rtol=1 / 16,
                                   atol=size * 1e-3)
        torch.testing.assert_close(back[:, which, 1], kv[:, which, 1].flip(1), rtol=1 / 16,
                                   atol=size * 1e-3)


def test_float8_history_generates_close_to_full_precision(backbone):
    cond = backbone.encode_conditioning([None, None], 24)
    full = make_engine(backbone).generate(cond, gens(), 24)
    fp8 = make_engine(backbone, storage="float8").generate(cond, gens(), 24)
    assert fp8.memory["kv_frame_bytes"] < full.memory["kv_frame_bytes"] / 3
    err = (fp8.latents - full.latents).norm() / full.latents.norm()
    assert 0 < err < 0.05, err


def test_float8_storage_leaves_a_native_run_exact(backbone):
    """Only history is quantised: sink and local window come from the exact ring, so a native
    run (which reads nothing else) is the same whatever the storage."""
    cond = backbone.encode_conditioning([None, None], 24)
    full = make_engine(backbone, k=0).generate(cond, gens(), 24)
    fp8 = make_engine(backbone, k=0, storage="float8").generate(cond, gens(), 24)
    assert torch.equal(fp8.latents, full.latents)


def test_host_tier_gives_the_same_latents(backbone):
    cond = backbone.encode_conditioning([None, None], 18)
    device = make_engine(backbone).generate(cond, gens(), 18)
    host = make_engine(backbone, tier="cpu").generate(cond, gens(), 18)
    assert torch.equal(device.latents, host.latents)


def test_thin_policy_keeps_an_even_spread_of_the_whole_history():
    spec = TinyBackbone(SMALL).spec
    total, capacity, sink, block = 96, 24, 1, 3
    memory = KVMemory(spec, 1, total, 12, capacity * frame_bytes(spec, 1), "thin", "cpu")
    kv = torch.zeros(spec.num_layers, 2, 1, block, spec.tokens_per_frame, spec.num_heads,
                     spec.head_dim)
    for start in range(0, total, block):
        memory.write(start, kv, droppable_below=max(0, start + block - 9), keep=sink)
    held = memory.has_kv().nonzero().flatten()
    assert len(held) == capacity and held[0] == 0  # the sink stays
    assert set(range(total - 9, total)) <= set(held.tolist())  # the window stays
    old = held[(held > 0) & (held < total - 9)]
    gaps = torch.diff(old)
    assert old[0] <= 8 and int(gaps.max()) <= 2 * int(gaps.min()) + 2  # spread, not a prefix


@pytest.mark.parametrize("storage", ["auto", "float8"])
def test_host_tier_with_device_ring_gives_the_same_video(backbone, storage):
    """Tier cpu reads sink and recent frames from the ring and retrieved ones from the pool:
    the same numbers as the single device pool, with frames dropped by the thin policy too."""
    cond = backbone.encode_conditioning([None, None], 36)
    budget = frame_bytes(backbone.spec, 2, storage) * 20
    runs = [make_engine(backbone, k=3, storage=storage, tier=tier, budget_bytes=budget)
            .generate(cond, gens(), 36) for tier in ("auto", "cpu")]
    assert runs[0].memory["kv_dropped_frames"] > 0
    assert any(any(ids) for e in runs[0].log for ids in e["ids"])
    assert runs[0].log == runs[1].log
    assert torch.equal(runs[0].latents, runs[1].latents)


@pytest.mark.parametrize("storage, tier", [("auto", "cpu"), ("float8", "auto"), ("float8", "cpu")])
def test_ring_and_pool_rows_are_gathered_in_planned_order(storage, tier):
    """Runs of ring frames (sink, recent: exact) and of pool frames (history; float8: within
    e4m3's rounding) interleave back into the planned order."""
    spec = TinyBackbone(SMALL).spec
    memory = KVMemory(spec, 2, 30, 6, 2 ** 30, "error", torch.device("cpu"), storage=storage,
                      tier=tier, sink=1)
    gen = torch.Generator().manual_seed(0)
    kv = torch.randn((spec.num_layers, 2, 2, 30, spec.tokens_per_frame, spec.num_heads,
                      spec.head_dim), generator=gen)
    for start in range(0, 30, 3):
        memory.write(start, kv[:, :, :, start:start + 3], droppable_below=0, keep=0)
    ids = torch.tensor([[0, 4, 11, 25, 28, -1], [0, 7, 2, 26, 29, 27]])  # ring: 0, >= 24
    out = memory.gather(ids, start=30)
    for s in range(2):
        for j, frame in enumerate(ids[s].tolist()):
            if frame < 0:
                continue
            if storage == "auto" or frame == 0 or frame >= 24:
                assert torch.equal(out[:, :, s, j], kv[:, :, s, frame])
            else:
                torch.testing.assert_close(out[:, :, s, j], kv[:, :, s, frame], rtol=1 / 16,
                                           atol=1e-2)
                assert not torch.equal(out[:, :, s, j], kv[:, :, s, frame])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (side-stream copies)")
@pytest.mark.parametrize("storage", ["auto", "float8"])
def test_pinned_host_tier_with_prefetch_matches_the_device_pool_on_cuda(storage):
    backbone = TinyBackbone(SMALL).to("cuda")
    cond = backbone.encode_conditioning([None, None], 36)
    budget = frame_bytes(backbone.spec, 2, storage) * 20
    runs = []
    for tier in ("auto", "cpu"):
        g = Geometry(block=3, window=9, sink=1, k=3, recency=1, placement="fill")
        engine = Engine(backbone, MeanEmbedder(), BruteForce(), EngineOptions(
            g, storage=storage, tier=tier, budget_bytes=budget), "cuda")
        runs.append(engine.generate(cond, gens(), 36))
    assert any(any(ids) for e in runs[0].log for ids in e["ids"])
    assert runs[0].log == runs[1].log
    assert torch.equal(runs[0].latents, runs[1].latents)


def per_step_noise(seed, streams, blocks, steps, shape):
    """The engine's drawing order before noise was drawn a block ahead: per block the initial
    noise of every stream, then per step one sampler noise of every stream."""
    generators = [stream_generator(seed, s) for s in range(streams)]
    out = []
    for _ in range(blocks):
        rows = [torch.stack([torch.randn(shape, generator=g) for g in generators])]
        for _ in range(steps):
            rows.append(torch.stack([torch.randn(shape, generator=g) for g in generators]))
        out.append(torch.stack(rows))
    return torch.stack(out)  # [blocks, 1 + steps, B, *shape]


@pytest.mark.parametrize("shape", [(3, 4, 6, 8), (1, 3, 5, 7)])  # numel a multiple of 16 or not
def test_block_noise_is_the_same_in_any_schedule_of_drawing(shape):
    from lrag_framework.generation.engine import block_noise

    expected = per_step_noise(7, 3, 2, 4, shape)
    together = [block_noise([stream_generator(7, s) for s in range(3)], shape, 4)]
    together.append(block_noise([stream_generator(7, s) for s in range(3)], shape, 4))  # fresh
    generators = [stream_generator(7, s) for s in range(3)]
    blocks = torch.stack([block_noise(generators, shape, 4) for _ in range(2)])
    alone = torch.stack([torch.cat([block_noise([g], shape, 4) for g in
                                    [stream_generator(7, s) for s in range(3)]], dim=1)])
    assert torch.equal(blocks, expected)  # whole blocks ahead == step by step, bitwise
    assert torch.equal(together[0], expected[0]) and torch.equal(together[1], expected[0])
    assert torch.equal(alone[0], expected[0])  # one stream at a time == all streams together
    assert not torch.equal(expected[0], expected[1])  # blocks differ


def test_engine_feeds_the_backbone_the_noise_of_each_block_and_step(backbone):
    seen = []

    class Spy(TinyBackbone):
        def sampler_step(self, x, prediction, t, t_next, noise):
            seen.append(noise.clone())
            return super().sampler_step(x, prediction, t, t_next, noise)

    spy = Spy(SMALL)
    spy.model.load_state_dict(backbone.model.state_dict())
    cond = spy.encode_conditioning([None, None], 9)
    out = make_engine(spy).generate(cond, gens(), 9)
    steps = len(spy.timesteps())
    expected = per_step_noise(0, 2, 3, steps, (3, *spy.spec.latent_shape))
    assert torch.equal(torch.stack(seen).view(3, steps, *expected.shape[2:]), expected[:, 1:])
    ref = sliding_window_reference(backbone, 9, window=9, sink=1, block=3, generators=gens())
    torch.testing.assert_close(out.latents, ref, rtol=1e-5, atol=1e-5)
