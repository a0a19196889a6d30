"""The tiny backbone: training forward == inference path, sampler, weights loading."""
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from lrag_adapters.tiny.backbone import TinyBackbone
from lrag_adapters.tiny.params import TinyParams
from lrag_adapters.tiny.train import teacher_forcing_mask
from lrag_framework.interfaces import Context

P = TinyParams(height=16, width=16, patch=4, dim=32, layers=2, heads=2, weights=None)


def context_of(kv, frames, block_start, block):
    b = kv.shape[2]
    ids = torch.arange(frames).expand(b, -1)
    return Context(kv=kv, frame_ids=ids, positions=ids.clone(), roles=torch.full_like(ids, 2),
                   valid=torch.ones_like(ids, dtype=torch.bool), block_start=block_start,
                   block_positions=torch.arange(block_start, block_start + block).expand(b, -1))


def test_teacher_forcing_sequence_matches_cached_inference():
    """One masked forward over [clean | noisy] gives the velocities of block-by-block inference
    with recached context: training sees exactly what generation will."""
    bb = TinyBackbone(P)
    torch.manual_seed(0)
    b, t = 2, 6
    clean = torch.randn(b, t, 3, 16, 16)
    noisy = torch.randn(b, t, 3, 16, 16)
    actions = torch.randn(b, t, 2)
    sigma_t = torch.tensor([[700.0] * 3 + [300.0] * 3] * b)
    cond = bb.encode_conditioning([a.numpy() for a in actions], t)
    pos = torch.arange(t).expand(b, -1)
    seq_pred = bb.model.forward_sequence(
        torch.cat((clean, noisy), 1), torch.cat((torch.zeros(b, t), sigma_t), 1),
        torch.cat((actions, actions), 1), torch.cat((pos, pos), 1),
        teacher_forcing_mask(t, 3, "cpu"))[:, t:]
    empty = torch.zeros(2, 2, b, 0, 16, 2, 16)
    prep0 = bb.prepare(context_of(empty, 0, 0, 3))
    pred0 = bb.denoise(noisy[:, :3], sigma_t[:, 0], cond, prep0)
    kv0 = bb.recache(clean[:, :3], cond, prep0)
    prep1 = bb.prepare(context_of(kv0, 3, 3, 3))
    pred1 = bb.denoise(noisy[:, 3:], sigma_t[:, 3], cond, prep1)
    torch.testing.assert_close(seq_pred, torch.cat((pred0, pred1), 1), rtol=1e-4, atol=1e-5)


def test_renoise_sampler_reaches_clean_estimate():
    bb = TinyBackbone(P)
    x0, noise = torch.randn(4, 3), torch.randn(4, 3)
    t, t_next = torch.tensor(750.0), torch.tensor(0.0)
    x = 0.25 * x0 + 0.75 * noise
    v = noise - x0
    torch.testing.assert_close(bb.sampler_step(x, v, t, t_next, torch.randn(4, 3)), x0)
    euler = TinyBackbone(P.model_copy(update={"sampler": "euler"}))
    torch.testing.assert_close(euler.sampler_step(x, v, t, t_next, torch.randn(4, 3)), x0)


def test_weights_load_strictly(tmp_path):
    bb = TinyBackbone(P)
    path = tmp_path / "w.safetensors"
    state = {k: v.clone() for k, v in bb.model.state_dict().items()}
    save_file(state, str(path))
    loaded = TinyBackbone(P.model_copy(update={"weights": str(path), "init_seed": 5}))
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, state[k])
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(ValueError, match="head.bias.*extra.weight"):
        TinyBackbone(P.model_copy(update={"weights": str(path)}))
    with pytest.raises(FileNotFoundError, match="nope"):
        TinyBackbone(P.model_copy(update={"weights": str(tmp_path / "nope.safetensors")}))


def test_bad_actions_are_reported():
    bb = TinyBackbone(P)
    with pytest.raises(ValueError, match=r"actions must be \[T >= 9, 2\]"):
        bb.encode_conditioning([[[0.0, 1.0]] * 4], 9)


@pytest.mark.parametrize("name", ["builtin", "builtin-planned", "builtin-contiguous"])
def test_shipped_world_weights_load(name):
    from importlib import resources

    from safetensors.torch import load_file

    from lrag_adapters.tiny.backbone import BUILTIN_WEIGHTS

    bb = TinyBackbone(TinyParams(weights=name))
    folder = resources.files("lrag_adapters.tiny")
    shipped = load_file(str(folder.joinpath(BUILTIN_WEIGHTS[name])))
    assert shipped.keys() == bb.model.state_dict().keys()
    for k, v in bb.model.state_dict().items():
        assert torch.equal(v, shipped[k].float()), k
    assert sum(folder.joinpath(f).stat().st_size for f in BUILTIN_WEIGHTS.values()) <= 20e6
    with pytest.raises(ValueError, match="other sizes.*dim"):
        TinyBackbone(TinyParams(dim=96, heads=3, weights=name))


def test_default_weights_are_builtin():
    assert TinyParams().weights == "builtin"


def test_shipped_model_continues_the_world_better_than_noise():
    """The shipped weights must generate world-like frames from a ground-truth prefix: the first
    generated frames are far closer to the truth than the untrained model's."""
    from lrag_framework.generation.engine import Engine, EngineOptions, stream_generator
    from lrag_framework.generation.plan import Geometry
    from lrag_framework.outputs.report import psnr

    item = {"world": 7, "path": "revisit"}
    scores = {}
    for weights in ("builtin", None):
        bb = TinyBackbone(TinyParams(weights=weights))
        ref = bb.reference(item, 18)
        engine = Engine(bb, None, None, EngineOptions(Geometry(3, 12, 1)))
        out = engine.generate(bb.encode_conditioning([item], 18), [stream_generator(0, 0)], 18,
                              prefix=ref.latents[None, :12])
        scores[weights] = float(psnr(out.latents[0, 12:], ref.pixels[12:]).mean())
    assert scores["builtin"] > 14.0 and scores["builtin"] > scores[None] + 5, scores


def _cached_planned_context(bb, ctx, actions, positions, n_ret, blocks):
    """K/V of planned context frames [sink | retrieved | local blocks] through the backbone's
    recache pass, each group with the context that ``planned_mask`` gives it (frame ids are
    sequence indices); returns the Context of a block after them."""
    from lrag_adapters.tiny.backbone import ActionConditioning

    b = ctx.shape[0]
    cond = ActionConditioning(actions, torch.zeros_like(actions))
    kvs = torch.zeros(2, 2, b, 0, 16, 2, 16)
    groups = [[0]] + [[1 + j] for j in range(n_ret)]
    first = 1 + n_ret
    for size in blocks:
        groups.append(list(range(first, first + size)))
        first += size
    for group in groups:
        visible = [0] if group[0] <= n_ret else list(range(kvs.shape[3]))
        if group == [0]:
            visible = []
        idx = torch.tensor(visible, dtype=torch.long)
        context = Context(kv=kvs[:, :, :, idx], frame_ids=idx.expand(b, -1),
                          positions=positions[idx].expand(b, -1),
                          roles=torch.full((b, len(visible)), 2), valid=torch.ones(
                              b, len(visible), dtype=torch.bool), block_start=group[0],
                          block_positions=positions[group].expand(b, -1))
        kv = bb.recache(ctx[:, group], cond, bb.prepare(context))
        kvs = torch.cat((kvs, kv), dim=3)
    m = ctx.shape[1]
    ids = torch.arange(m)
    return cond, Context(kv=kvs, frame_ids=ids.expand(b, -1), positions=positions[:m].expand(
        b, -1), roles=torch.full((b, m), 2), valid=torch.ones(b, m, dtype=torch.bool),
        block_start=m, block_positions=positions[m:].expand(b, -1))


@pytest.mark.parametrize("n_ret", [3, 0])
def test_planned_context_forward_matches_cached_inference(n_ret):
    """The planned-context training forward ([sink | retrieved | local | block] at the positions
    ``plan_block`` gives) equals the engine's cached path: recache of the context frames, then
    denoising the block in that context; the training rollout equals the backbone's sampler."""
    from lrag_adapters.tiny.planned import layout, planned_mask, planned_velocity, rollout_block
    from lrag_framework.generation.plan import Geometry

    bb = TinyBackbone(P)
    g = Geometry(3, P.window, P.sink, 3, 5, "fill")
    positions, n_local, blocks = layout(g, n_ret)
    assert n_local == 8 - n_ret and sum(blocks) == n_local and blocks[-1] == 3
    if n_ret:
        assert positions.tolist() == [0, 0, 0, 0, 4, 5, 6, 7, 8, 9, 10, 11]
    torch.manual_seed(0)
    b, m = 2, 1 + n_ret + n_local
    ctx, block = torch.randn(b, m, 3, 16, 16), torch.randn(b, 3, 3, 16, 16)
    actions, sigma = torch.randn(b, m + 3, 2), torch.tensor([0.75, 0.3])
    mask = planned_mask(1, n_ret, blocks, 3)
    seq = planned_velocity(bb.model, ctx, block, sigma, actions, positions, mask)
    cond, context = _cached_planned_context(bb, ctx, actions, positions, n_ret, blocks)
    prepared = bb.prepare(context)
    torch.testing.assert_close(seq, bb.denoise(block, sigma * 1000, cond, prepared),
                               rtol=1e-4, atol=1e-5)
    rolled = rollout_block(bb.model, ctx, (3, 3, 16, 16), actions, positions, mask, P,
                           torch.Generator().manual_seed(3))
    gen, ts = torch.Generator().manual_seed(3), bb.timesteps()
    x = torch.randn((b, 3, 3, 16, 16), generator=gen)
    for i, t in enumerate(ts):
        pred = bb.denoise(x, t.expand(b), cond, prepared)
        t_next = ts[i + 1] if i + 1 < len(ts) else torch.zeros_like(t)
        x = bb.sampler_step(x, pred, t, t_next, torch.randn(x.shape, generator=gen))
    torch.testing.assert_close(rolled, x, rtol=1e-4, atol=1e-4)
    keep = 1 + n_ret  # a multi-block rollout: local block j from [sink | retrieved | blocks < j]
    for j, size in enumerate(blocks):
        sub = (ctx[:, :keep], actions[:, :keep + size], positions[:keep + size])
        block_j = torch.randn(b, size, 3, 16, 16)
        seq = planned_velocity(bb.model, sub[0], block_j, sigma, sub[1], sub[2],
                               planned_mask(1, n_ret, blocks[:j], size))
        cond, context = _cached_planned_context(bb, *sub, n_ret, blocks[:j])
        torch.testing.assert_close(seq, bb.denoise(block_j, sigma * 1000, cond,
                                                   bb.prepare(context)), rtol=1e-4, atol=1e-5)
        keep += size


def test_backbone_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    TinyBackbone(P)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_the_trainer_runs_planned_multi_block_rollouts_and_resumes(tmp_path):
    """Three steps of planned context with two rolled-out local blocks, exported; a second call
    with more steps resumes from the checkpoint instead of starting over."""
    from lrag_adapters.tiny.train import TrainConfig, train

    model = {"height": 64, "width": 64, "patch": 16, "dim": 32, "layers": 1, "heads": 2,
             "window": 12, "sink": 1, "weights": None}
    cfg = dict(model=model, out_dir=str(tmp_path / "t"), videos=2, video_frames=40,
               val_videos=1, batch_size=2, steps=3, warmup=1, planned_prob=1.0,
               retrieved_prob=1.0, rollout_prob=1.0, rollout_blocks=2, log_every=1,
               checkpoint_every=10, device="cpu")
    events = []
    first = train(TrainConfig(**cfg), events.append)
    assert first["step"] == 3 and first["finished"]
    rows = [json.loads(r) for r in (tmp_path / "t" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["planned_loss"]) for r in rows)
    second = train(TrainConfig(**{**cfg, "steps": 4}), events.append)
    assert second["step"] == 4 and any("resumed from" in e and "step 3" in e for e in events)
    TinyBackbone(TinyParams(**{**model, "weights": second["weights"]}))  # the export loads


def test_the_backbone_generates_in_bfloat16():
    """The dtype a GPU run defaults to: every layer sees bf16 inputs (no autocast at inference)."""
    from lrag_framework.generation.engine import Engine, EngineOptions, stream_generator
    from lrag_framework.generation.plan import Geometry

    bb = TinyBackbone(P).to("cpu", torch.bfloat16)
    g = Geometry(3, P.window, P.sink)
    out = Engine(bb, None, None, EngineOptions(g)).generate(
        bb.encode_conditioning([None], 9), [stream_generator(0, 0)], 9)
    assert out.latents.shape[1] == 9 and bool(torch.isfinite(out.latents).all())
