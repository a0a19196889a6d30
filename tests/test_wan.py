"""Wan2.1 causal backbones: public checkpoint layouts, the Backbone contract, RoPE, sampler."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lrag_adapters.wan.backbone import WanBackbone
from lrag_adapters.wan.loading import CheckpointError
from lrag_adapters.wan.presets import (
    PRESETS,
    CausVidParams,
    LongLiveParams,
    SelfForcingParams,
)
from lrag_adapters.wan.schedule import FlowSchedule
from safetensors.torch import save_file

from lrag_framework.interfaces import ROLE_LOCAL, Context

SIZES = {"num_layers": 2, "dim": 32, "num_heads": 2, "ffn_dim": 48, "freq_dim": 16, "text_dim": 24,
         "text_len": 8, "latent_channels": 4, "latent_height": 4, "latent_width": 6}
L, D, HH, DH, FFN, TXT, C, N = 2, 32, 2, 16, 48, 24, 4, 6  # N = (4/2) * (6/2) tokens per frame
LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q",
           "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def public_wan_shapes() -> dict[str, tuple]:
    """Key names and shapes of Wan2.1 ``WanModel.state_dict()`` (t2v), written out by hand."""
    shapes = {"patch_embedding.weight": (D, C, 1, 2, 2), "patch_embedding.bias": (D,),
              "text_embedding.0.weight": (D, TXT), "text_embedding.0.bias": (D,),
              "text_embedding.2.weight": (D, D), "text_embedding.2.bias": (D,),
              "time_embedding.0.weight": (D, 16), "time_embedding.0.bias": (D,),
              "time_embedding.2.weight": (D, D), "time_embedding.2.bias": (D,),
              "time_projection.1.weight": (6 * D, D), "time_projection.1.bias": (6 * D,),
              "head.head.weight": (4 * C, D), "head.head.bias": (4 * C,),
              "head.modulation": (1, 2, D)}
    for i in range(L):
        b = f"blocks.{i}."
        for attn in ("self_attn", "cross_attn"):
            for lin in "qkvo":
                shapes[f"{b}{attn}.{lin}.weight"], shapes[f"{b}{attn}.{lin}.bias"] = (D, D), (D,)
            shapes[f"{b}{attn}.norm_q.weight"] = shapes[f"{b}{attn}.norm_k.weight"] = (D,)
        shapes.update({f"{b}norm3.weight": (D,), f"{b}norm3.bias": (D,),
                       f"{b}ffn.0.weight": (FFN, D), f"{b}ffn.0.bias": (FFN,),
                       f"{b}ffn.2.weight": (D, FFN), f"{b}ffn.2.bias": (D,),
                       f"{b}modulation": (1, 6, D)})
    return shapes


def random_state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * 0.2 for k, s in public_wan_shapes().items()}


@pytest.fixture(scope="module")
def bb():
    return WanBackbone(SelfForcingParams(random_init=True, window=6, sink=1, **SIZES))


def context(b, f, start, fb=3, positions=None, valid=None, kv=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kv = torch.randn(L, 2, b, f, N, HH, DH, generator=gen) if kv is None else kv
    ids = torch.arange(f).expand(b, -1)
    pos = ids.clone() if positions is None else positions
    valid = torch.ones(b, f, dtype=torch.bool) if valid is None else valid
    return Context(kv=kv, frame_ids=torch.where(valid, ids, -1), positions=pos,
                   roles=torch.full((b, f), ROLE_LOCAL), valid=valid, block_start=start,
                   block_positions=(pos[:, -1:] if f else torch.zeros(b, 1, dtype=torch.long))
                   + 1 + torch.arange(fb))


def prompt(seed=0, length=5):
    return torch.randn(length, TXT, generator=torch.Generator().manual_seed(seed))


# -- checkpoints in the public layouts ----------------------------------------------------------

def test_model_has_exactly_the_public_wan_keys(bb):
    shapes = {k: tuple(v.shape) for k, v in bb.model.state_dict().items()}
    assert shapes == public_wan_shapes()


def write_base(folder, state):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"_class_name": "WanModel", "dim": D, "eps": 1e-6, "ffn_dim": FFN, "freq_dim": 16,
         "in_dim": C, "model_type": "t2v", "num_heads": HH, "num_layers": L, "out_dim": C,
         "text_len": 8}))
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))


def test_base_folder_loads_every_key(tmp_path):
    state = random_state(1)
    write_base(tmp_path / "wan", state)
    bb = WanBackbone(SelfForcingParams(generator_ckpt=None, base_dir=str(tmp_path / "wan"),
                                       **SIZES))
    loaded = bb.model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_base_config_with_other_sizes_is_refused(tmp_path):
    write_base(tmp_path / "wan", random_state(1))
    with pytest.raises(CheckpointError, match=r"config.json.*num_layers 2 \(params: 3\)"):
        WanBackbone(SelfForcingParams(generator_ckpt=None, base_dir=str(tmp_path / "wan"),
                                      **{**SIZES, "num_layers": 3}))


def write_generator(path, ema_prefix="model._fsdp_wrapped_module."):
    """Self-Forcing / Causal-Forcing / LongLive-RAG layout: WanDiffusionWrapper state dicts."""
    gen, ema = random_state(2), random_state(3)
    torch.save({"generator": {f"model.{k}": v.bfloat16() for k, v in gen.items()},
                "generator_ema": {ema_prefix + k: v for k, v in ema.items()},
                "critic": {"model.blocks.0.ffn.0.bias": torch.zeros(3)}, "step": 600}, path)
    return gen, ema


@pytest.mark.parametrize("use_ema", [False, True])
def test_generator_checkpoint_entries_load_every_key(tmp_path, use_ema):
    gen, ema = write_generator(tmp_path / "self_forcing.pt")
    bb = WanBackbone(SelfForcingParams(generator_ckpt=str(tmp_path / "self_forcing.pt"),
                                       base_dir=None, use_ema=use_ema, **SIZES))
    expected = ema if use_ema else {k: v.bfloat16().float() for k, v in gen.items()}
    loaded = bb.model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k].float(), v) for k, v in expected.items())


def test_lora_is_merged_into_every_block_linear(tmp_path):
    gen, _ = write_generator(tmp_path / "longlive_base.pt")
    g = torch.Generator().manual_seed(4)
    lora, rank, alpha = {}, 4, 8.0
    for i in range(L):
        for lin in LINEARS:
            w = gen[f"blocks.{i}.{lin}.weight"]
            lora[f"base_model.model.blocks.{i}.{lin}.lora_A.weight"] = torch.randn(
                rank, w.shape[1], generator=g)
            lora[f"base_model.model.blocks.{i}.{lin}.lora_B.weight"] = torch.randn(
                w.shape[0], rank, generator=g)
    torch.save({"generator_lora": lora, "critic_lora": {}, "step": 3}, tmp_path / "lora.pt")
    bb = WanBackbone(LongLiveParams(generator_ckpt=str(tmp_path / "longlive_base.pt"),
                                    lora_ckpt=str(tmp_path / "lora.pt"), lora_rank=rank,
                                    lora_alpha=alpha, base_dir=None, **SIZES))
    loaded = bb.model.state_dict()
    for key, base in gen.items():
        base = base.bfloat16().float()
        module = key.removesuffix(".weight")
        if module.split(".", 2)[-1] in LINEARS and key.endswith(".weight"):
            a = lora[f"base_model.model.{module}.lora_A.weight"]
            b = lora[f"base_model.model.{module}.lora_B.weight"]
            expected = (base + alpha / rank * b @ a).bfloat16().float()
            torch.testing.assert_close(loaded[key].float(), expected, rtol=0, atol=0)
        else:
            assert torch.equal(loaded[key].float(), base), key


def test_missing_and_extra_keys_name_the_file(tmp_path):
    gen = random_state(2)
    del gen["blocks.1.ffn.2.bias"]
    gen["blocks.0.extra.weight"] = torch.zeros(1)
    torch.save({"generator": {f"model.{k}": v for k, v in gen.items()}}, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match=r"g\.pt does not match.*missing blocks\.1\.ffn\.2"
                       r"\.bias; unexpected blocks\.0\.extra\.weight"):
        WanBackbone(SelfForcingParams(generator_ckpt=str(tmp_path / "g.pt"), base_dir=None,
                                      use_ema=False, **SIZES))


def test_absent_files_and_entries_say_what_and_how_to_download(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt not found.*generator.*hf download "
                       r"qixinhu11/LongLive-RAG"):
        WanBackbone(SelfForcingParams(generator_ckpt=str(tmp_path / "nope.pt"), **SIZES))
    with pytest.raises(CheckpointError, match=r"hf download Wan-AI/Wan2.1-T2V-1.3B"):
        WanBackbone(SelfForcingParams(generator_ckpt=None, base_dir=str(tmp_path), **SIZES))
    torch.save({"generator": {}}, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match=r"no 'generator_ema' entry.*use_ema: false"):
        WanBackbone(SelfForcingParams(generator_ckpt=str(tmp_path / "g.pt"), **SIZES))


def test_pickled_code_is_refused(tmp_path):
    torch.save({"generator": {"model.x": torch.zeros(1)}, "config": FlowSchedule(5.0)},
               tmp_path / "g.pt")
    with pytest.raises(CheckpointError,
                       match=r"g\.pt: cannot read .*weights_only=True.*pickled object") as err:
        WanBackbone(SelfForcingParams(generator_ckpt=str(tmp_path / "g.pt"), use_ema=False,
                                      **SIZES))
    for advice in ("weights_only=False", "add_safe_globals"):  # torch's advice: never repeated
        assert advice not in str(err.value)


def test_generator_safetensors_with_or_without_model_prefix(tmp_path):
    from lrag_framework.files import write_tensors

    state = {f"model.{k}": v for k, v in random_state(3).items()}
    for name, s in (("prefixed", state), ("bare", {k[6:]: v for k, v in state.items()})):
        write_tensors(tmp_path / f"{name}.safetensors", s)
        WanBackbone(SelfForcingParams(generator_ckpt=str(tmp_path / f"{name}.safetensors"),
                                      use_ema=True, **SIZES))


# -- numerics against the public implementation -------------------------------------------------

# Velocities (every 23rd value) from LongLive-RAG's CausalWanModel (wan/modules/
# causal_model_latentmem.py, run on CPU in float32 with SDPA attention) for the weights
# random_state(11): block 0 at t = 937.5 with no context, its recache on `clean`, then block 1 at
# t = 625 attending to it (cache positions 0..2, block 3..5).
PUBLIC_BLOCK0 = [-0.95631, -1.4819, -0.40355, 0.82894, -1.21081, -2.64439, -0.27695, -0.57708,
                 -1.31846, -0.4814, -1.14951, 1.32476]
PUBLIC_BLOCK1 = [-0.69053, -2.71932, -2.32675, 1.98205, -1.65938, -0.95985, -0.95166, 1.32819,
                 -1.63383, 0.58203, 0.63194, 1.52147]


def test_velocities_match_the_public_causal_wan(tmp_path):
    torch.save({"generator": {f"model.{k}": v for k, v in random_state(11).items()}},
               tmp_path / "g.pt")
    bb = WanBackbone(SelfForcingParams(generator_ckpt=str(tmp_path / "g.pt"), use_ema=False,
                                       base_dir=None, **SIZES))
    g = torch.Generator().manual_seed(12)
    x0, clean, x1 = (torch.randn(1, 3, C, 4, 6, generator=g) for _ in range(3))
    cond = bb.encode_conditioning([prompt(3)], 6)
    first = bb.prepare(context(1, 0, 0))
    a = bb.denoise(x0, torch.tensor([937.5]), cond, first)
    kv = bb.recache(clean, cond, first)
    b = bb.denoise(x1, torch.tensor([625.0]), cond, bb.prepare(context(1, 3, 3, kv=kv)))
    for out, public in ((a, PUBLIC_BLOCK0), (b, PUBLIC_BLOCK1)):
        torch.testing.assert_close(out.flatten()[::23][:12], torch.tensor(public), rtol=0,
                                   atol=2e-5)


# -- the Backbone contract ----------------------------------------------------------------------

def test_prepare_denoise_recache_shapes(bb):
    cond = bb.encode_conditioning([prompt(0), prompt(1, 8)], 9)
    prepared = bb.prepare(context(2, 4, 4))
    x = torch.randn(2, 3, C, 4, 6)
    v = bb.denoise(x, torch.tensor([1000.0, 500.0]), cond, prepared)
    kv = bb.recache(x, cond, prepared)
    assert v.shape == x.shape and v.dtype == torch.float32 and v.isfinite().all()
    assert kv.shape == (L, 2, 2, 3, N, HH, DH)
    with pytest.raises(ValueError, match=r"expected a block \[2, 3, 4, 4, 6\]"):
        bb.denoise(x[:, :2], torch.tensor([1000.0, 500.0]), cond, prepared)


def test_first_block_without_context(bb):
    cond = bb.encode_conditioning([prompt(0)], 3)
    prepared = bb.prepare(context(1, 0, 0))
    assert bb.recache(torch.randn(1, 3, C, 4, 6), cond, prepared).shape == (L, 2, 1, 3, N, HH, DH)


def test_output_uses_valid_context_and_ignores_padding(bb):
    """Stream 1 has one valid context frame and one padded (garbage, even NaN) frame: its output
    equals running it alone on its valid frame; changing a valid frame changes the output."""
    cond = bb.encode_conditioning([prompt(0), prompt(0)], 9)
    kv = torch.randn(L, 2, 2, 2, N, HH, DH, generator=torch.Generator().manual_seed(5))
    kv[:, :, 1, 1] = float("nan")
    valid = torch.tensor([[True, True], [True, False]])
    x, t = torch.randn(2, 3, C, 4, 6), torch.tensor([750.0, 750.0])
    both = bb.denoise(x, t, cond, bb.prepare(context(2, 2, 3, kv=kv, valid=valid)))
    alone_ctx = context(1, 1, 3, kv=kv[:, :, 1:, :1].clone(),
                        positions=torch.tensor([[0]]))
    alone_ctx.block_positions = torch.tensor([[2, 3, 4]])
    alone = bb.denoise(x[1:], t[1:], bb.encode_conditioning([prompt(0)], 9),
                       bb.prepare(alone_ctx))
    assert both.isfinite().all()
    torch.testing.assert_close(both[1:], alone, rtol=1e-5, atol=1e-5)
    kv[:, 0, 0, 0] += 1.0
    changed = bb.denoise(x, t, cond, bb.prepare(context(2, 2, 3, kv=kv, valid=valid)))
    assert not torch.allclose(changed[0], both[0], atol=1e-4)
    torch.testing.assert_close(changed[1], both[1], rtol=0, atol=0)


@settings(max_examples=12)
@given(st.lists(st.integers(0, 40), min_size=0, max_size=3), st.integers(0, 300))
def test_rope_depends_only_on_relative_positions(positions, shift):
    bb = WanBackbone(SelfForcingParams(random_init=True, **SIZES))
    cond = bb.encode_conditioning([prompt(0)], 9)
    f = len(positions)
    pos = torch.tensor([positions], dtype=torch.long).reshape(1, f)
    x, t = torch.randn(1, 3, C, 4, 6, generator=torch.Generator().manual_seed(6)), torch.tensor(
        [500.0])
    base = context(1, f, 6, positions=pos)
    base.block_positions = torch.tensor([[20, 21, 22]])
    moved = context(1, f, 6, positions=pos + shift)
    moved.block_positions = base.block_positions + shift
    a = bb.denoise(x, t, cond, bb.prepare(base))
    b = bb.denoise(x, t, cond, bb.prepare(moved))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def absolute_sliding_window(bb, cond, gen, num_frames, window, sink, block=3):
    """The public native loop written out by hand: the sink and the latest frames of a rolling
    cache of ``window`` frames, every frame rotated at its own frame index."""
    kv_of, out, ts = [], [], bb.timesteps()
    shape = (block, *bb.spec.latent_shape)
    for start in range(0, num_frames, block):
        ids = list(range(min(sink, start)))
        ids += list(range(max(sink, start - (window - sink - block)), start))
        f = len(ids)
        kv = torch.cat([kv_of[i] for i in ids], dim=3) if ids else torch.zeros(L, 2, 1, 0, N, HH,
                                                                                 DH)
        ctx = Context(kv=kv, frame_ids=torch.tensor([ids]).view(1, f),
                      positions=torch.tensor([ids]).view(1, f), roles=torch.full((1, f), 2),
                      valid=torch.ones(1, f, dtype=torch.bool), block_start=start,
                      block_positions=torch.arange(start, start + block)[None])
        prepared = bb.prepare(ctx)
        x = torch.randn(shape, generator=gen)[None]
        for i, t in enumerate(ts):
            pred = bb.denoise(x, t.expand(1), cond, prepared)
            t_next = ts[i + 1] if i + 1 < len(ts) else torch.zeros(())
            x = bb.sampler_step(x, pred, t, t_next, torch.randn(shape, generator=gen)[None])
        kv_of += list(bb.recache(x, cond, prepared).split(1, dim=3))
        out.append(x)
    return torch.cat(out, dim=1)


def test_absolute_positions_follow_the_public_native_loop(bb):
    from lrag_framework.generation.engine import Engine, EngineOptions, stream_generator
    from lrag_framework.generation.plan import Geometry

    cond = bb.encode_conditioning([prompt(0)], 15)
    ref = absolute_sliding_window(bb, cond, stream_generator(0, 0), 15, window=6, sink=1)
    runs = {}
    for positions in ("absolute", "slots"):
        g = Geometry(block=3, window=6, sink=1, positions=positions)
        engine = Engine(bb, None, None, EngineOptions(g))
        runs[positions] = engine.generate(cond, [stream_generator(0, 0)], 15).latents
    torch.testing.assert_close(runs["absolute"], ref, rtol=1e-5, atol=1e-5)
    # Slots agree until the cache first rolls (block [6, 9)), then the sink sits elsewhere.
    torch.testing.assert_close(runs["slots"][:, :6], ref[:, :6], rtol=1e-5, atol=1e-5)
    assert (runs["slots"][:, 6:] - ref[:, 6:]).abs().amax() > 1e-3


def test_absolute_positions_past_the_rope_table_are_refused(bb, tmp_path):
    import lrag_framework
    from lrag_framework.config import ConfigError
    from lrag_framework.generation.engine import Engine, EngineOptions, stream_generator
    from lrag_framework.generation.plan import Geometry

    assert bb.spec.max_positions == 1024  # upstream's rope_params(1024, ...)
    g = Geometry(block=3, window=6, sink=1, positions="absolute")
    engine = Engine(bb, None, None, EngineOptions(g))
    with pytest.raises(ValueError, match=r"positions 0 \.\. 1023 only \(num_frames 1025"):
        engine.generate(bb.encode_conditioning([prompt(0)], 1025), [stream_generator(0, 0)], 1025)
    with pytest.raises(ConfigError, match="positions: absolute"):
        lrag_framework.run({
            "backbone": {"name": "self_forcing", "params": {"random_init": True, **SIZES}},
            "retrieval": {"enabled": False},
            "generation": {"num_frames": 1025, "positions": "absolute", "batch_size": 1},
            "conditionings": [prompt(0).tolist()],
            "output": {"root": str(tmp_path), "video": False}})


def test_deterministic_and_seeded():
    params = SelfForcingParams(random_init=True, init_seed=3, **SIZES)
    outs = []
    for p in (params, params, params.model_copy(update={"init_seed": 4})):
        bb = WanBackbone(p)
        cond = bb.encode_conditioning([prompt(0)], 9)
        x = torch.randn(1, 3, C, 4, 6, generator=torch.Generator().manual_seed(7))
        outs.append(bb.denoise(x, torch.tensor([1000.0]), cond, bb.prepare(context(1, 2, 3))))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


def test_bfloat16_keeps_the_modulation_path_in_float32():
    bb = WanBackbone(SelfForcingParams(random_init=True, **SIZES)).to("cpu", torch.float32)
    modulation = bb.model.blocks[0].modulation.detach().clone()
    bb.to("cpu", torch.bfloat16)
    assert torch.equal(bb.model.blocks[0].modulation, modulation)  # never rounded through bf16
    dtypes = {k: v.dtype for k, v in bb.model.state_dict().items()}
    assert dtypes["blocks.0.modulation"] == dtypes["time_projection.1.weight"] == torch.float32
    assert dtypes["blocks.0.norm3.weight"] == dtypes["head.modulation"] == torch.float32
    assert dtypes["blocks.0.self_attn.q.weight"] == dtypes["head.head.weight"] == torch.bfloat16
    cond = bb.encode_conditioning([prompt(0)], 9)
    prepared = bb.prepare(context(1, 2, 3))
    x = torch.randn(1, 3, C, 4, 6)
    assert bb.denoise(x, torch.tensor([500.0]), cond, prepared).dtype == torch.float32
    assert bb.recache(x, cond, prepared).dtype == bb.spec.kv_dtype == torch.bfloat16


# -- conditioning -------------------------------------------------------------------------------

def test_short_prompt_is_zero_padded_and_files_are_read_once(bb, tmp_path):
    short = prompt(0, 5)
    padded = torch.cat((short, torch.zeros(3, TXT)))
    save_file({"prompt_embeds": short}, str(tmp_path / "p.safetensors"))
    path = str(tmp_path / "p.safetensors")
    a = bb.encode_conditioning([short], 9).text_kv
    b = bb.encode_conditioning([padded], 9).text_kv
    c = bb.encode_conditioning([path, path], 9)
    torch.testing.assert_close(a, b)
    assert c.text_kv.shape[2] == 1 and c.prompts.tolist() == [[0], [0]]
    torch.testing.assert_close(c.text_kv, a)


@pytest.mark.parametrize("item, message", [
    (None, "got None"), (torch.zeros(9, TXT), r"\[Lt <= 8, 24\], got \[9, 24\]"),
    (torch.zeros(4, 7), r"got \[4, 7\]"), ("missing.safetensors", "existing .safetensors"),
    ([{"start": 3, "embedding": torch.zeros(2, TXT)}], "increasing frame ids from 0"),
])
def test_bad_conditioning_is_named(bb, item, message):
    with pytest.raises(ValueError, match=message):
        bb.encode_conditioning([item], 9)


def test_prompt_segments_switch_and_recache_under_the_new_prompt(bb):
    a, b = prompt(0), prompt(1)
    cond = bb.encode_conditioning([[{"start": 0, "embedding": a}, {"start": 6, "embedding": b}],
                                   a], 12)
    assert cond.switch_frames == (6,)
    frames = torch.tensor([[4, 5, 6], [4, 5, 6]])
    assert cond.prompt_of(frames).tolist() == [[0, 0, 1], [0, 0, 0]]
    assert cond.cross(frames).shape == (L, 2, 2, 3, 8, HH, DH)  # a prompt per frame
    only_b = bb.encode_conditioning([b, a], 12)
    x = torch.randn(2, 3, C, 4, 6)
    ctx = context(2, 1, 3)
    ctx.cond_frame = 6  # the engine recaches old frames under the prompt starting at 6
    torch.testing.assert_close(bb.recache(x, cond, bb.prepare(ctx)),
                               bb.recache(x, only_b, bb.prepare(context(2, 1, 3))))


def test_schedule_switches_move_to_the_next_block_start(bb):
    a, b, c = prompt(0), prompt(1), prompt(2)
    cond = bb.encode_conditioning(
        [[{"start": 0, "embedding": a}, {"start": 4, "embedding": b},
          {"start": 5, "embedding": c}],  # two switches inside block [3, 6): c wins at 6
         [{"start": 0, "embedding": a}, {"start": 11, "embedding": b}]], 12)  # past the last
    aligned = cond.aligned([0, 1, 3, 6, 9])  # a 1-frame prefix block, then blocks of 3
    assert aligned.switch_frames == (6,)
    frames = torch.arange(12)
    assert aligned.prompt_of(frames.expand(2, -1)).tolist() == [[0] * 6 + [2] * 6, [0] * 12]
    assert aligned.segments(frames).tolist() == [[0] * 6 + [2] * 6, [0] * 12]


# -- sampler ------------------------------------------------------------------------------------

def test_warped_timesteps_match_self_forcing_and_causvid_is_unwarped():
    sf = WanBackbone(SelfForcingParams(random_init=True, **SIZES))
    torch.testing.assert_close(sf.timesteps(), torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]))
    cv = WanBackbone(CausVidParams(random_init=True, **SIZES))
    assert cv.timesteps().tolist() == [1000.0, 757.0, 522.0]
    sched = FlowSchedule(8.0)  # an unwarped step takes the sigma of the nearest table entry
    sigma = float(sched.sigma(torch.tensor(757.0)))
    assert abs(sigma * 1000 - 757.0) < 0.5 and sigma == float(sched.sigmas[
        (sched.timesteps - 757.0).abs().argmin()])


def test_sampler_step_renoises_the_clean_estimate(bb):
    x0, noise, fresh = torch.randn(3, 1, 2, 4, 6).unbind(0)
    sigma = 0.9375  # timestep 937.5 with shift 5
    x = (1 - sigma) * x0 + sigma * noise
    v = noise - x0
    torch.testing.assert_close(bb.sampler_step(x, v, torch.tensor(937.5), torch.tensor(0.0),
                                               fresh), x0)
    nxt = bb.sampler_step(x, v, torch.tensor(937.5), torch.tensor(625.0), fresh)
    torch.testing.assert_close(nxt, 0.375 * x0 + 0.625 * fresh)


# -- plugin -------------------------------------------------------------------------------------

def test_presets_are_registered_with_their_documented_defaults():
    from lrag_framework.plugins import load_plugins

    registry = load_plugins()
    names = {e.name for e in registry.entries("backbone")}
    assert set(PRESETS) <= names
    sf, cv = SelfForcingParams(), CausVidParams()
    assert (sf.window, sf.sink, sf.use_ema, sf.timestep_shift) == (12, 1, True, 5.0)
    assert (cv.window, cv.sink, cv.timestep_shift, cv.warp_denoising_step) == (21, 0, 8.0, False)
    ll = LongLiveParams()
    assert (ll.lora_rank, ll.lora_alpha, ll.use_ema) == (256, 256.0, False)
    built = registry.build("backbone", "causal_forcing", {"random_init": True, **SIZES})
    assert isinstance(built, WanBackbone) and built.spec.tokens_per_frame == N


def test_run_end_to_end_with_retrieval(tmp_path):
    import lrag_framework

    save_file({"prompt_embeds": prompt(0)}, str(tmp_path / "p.safetensors"))
    result = lrag_framework.run({
        "backbone": {"name": "self_forcing", "params": {"random_init": True, **SIZES}},
        "retrieval": {"k": 2, "recency": 1, "placement": "reference"},
        "generation": {"num_frames": 18, "window": 6, "sink": 1, "batch_size": 1},
        "conditionings": [str(tmp_path / "p.safetensors")], "compare": True,
        "output": {"root": str(tmp_path), "video": False}})
    assert result.latents["retrieval"].shape == (1, 18, C, 4, 6)
    assert result.summary["modes"]["retrieval"]["blocks_retrieved"] > 0
    assert result.latents["retrieval"].isfinite().all()


def test_fused_ffn_epilogue_gives_the_plain_ffn_and_compiles():
    """``linear_gelu`` (the FFN's first linear with bias and tanh GELU as one op) equals the
    module pair it replaces on the CPU, also inside torch.compile (its fake shape)."""
    from lrag_adapters.wan.model import linear_gelu

    gen = torch.Generator().manual_seed(0)
    up = torch.nn.Linear(D, FFN)
    x = torch.randn(2, 3, N, D, generator=gen)
    plain = torch.nn.functional.gelu(up(x), approximate="tanh")
    assert torch.equal(linear_gelu(x, up.weight, up.bias), plain)
    compiled = torch.compile(lambda h: linear_gelu(h, up.weight, up.bias) * 2, backend="eager")
    torch.testing.assert_close(compiled(x), plain * 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the cuBLASLt epilogue needs CUDA")
def test_fused_ffn_epilogue_is_close_to_the_plain_ffn_on_cuda():
    from lrag_adapters.wan.model import linear_gelu

    gen = torch.Generator(device="cuda").manual_seed(0)
    up = torch.nn.Linear(1536, 8960).to("cuda", torch.bfloat16)
    x = torch.randn(1, 3, 1560, 1536, device="cuda", dtype=torch.bfloat16, generator=gen)
    plain = torch.nn.functional.gelu(up(x).float(), approximate="tanh")
    fused = linear_gelu(x, up.weight, up.bias).float()
    assert float((fused - plain).norm() / plain.norm()) < 1e-2
