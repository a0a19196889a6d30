"""TAEHV's decoder: the public taew2_1 key layout, streaming == whole == the public sequential
order, shapes, the Wan backbone's ``decoder: taehv`` switch, the float8 option's refusal on CPU."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from lrag_adapters.wan.loading import CheckpointError
from lrag_adapters.wan.taehv import MemBlock, TGrow, TAEHVDecoder, load_taehv, random_taehv


def public_encoder_shapes() -> dict[str, tuple]:
    """The ``encoder.*`` keys of taew2_1.pth (madebyollin/taehv ``TAEHV.encoder``): conv 3->64,
    then 3 stages of [TPool, stride-2 conv, 3 MemBlocks], conv 64->16."""
    shapes = {"encoder.0.weight": (64, 3, 3, 3), "encoder.0.bias": (64,),
              "encoder.17.weight": (16, 64, 3, 3), "encoder.17.bias": (16,)}
    for first, pool_in in ((2, 128), (7, 128), (12, 64)):  # TPool strides 2, 2, 1
        shapes[f"encoder.{first}.conv.weight"] = (64, pool_in, 1, 1)
        shapes[f"encoder.{first + 1}.weight"] = (64, 64, 3, 3)
        for block in range(first + 2, first + 5):
            for j, c_in in ((0, 128), (2, 64), (4, 64)):
                shapes[f"encoder.{block}.conv.{j}.weight"] = (64, c_in, 3, 3)
                shapes[f"encoder.{block}.conv.{j}.bias"] = (64,)
    return shapes


PUBLIC_DECODER_KEYS = {  # a few keys and shapes of taew2_1.pth, as the public module names them
    "decoder.1.weight": (256, 16, 3, 3), "decoder.3.conv.0.weight": (256, 512, 3, 3),
    "decoder.7.conv.weight": (256, 256, 1, 1), "decoder.8.weight": (128, 256, 3, 3),
    "decoder.13.conv.weight": (256, 128, 1, 1), "decoder.19.conv.weight": (128, 64, 1, 1),
    "decoder.20.weight": (64, 64, 3, 3), "decoder.22.weight": (3, 64, 3, 3),
    "decoder.22.bias": (3,)}


def public_file(tmp_path, name="taew2_1.pth", stride2_first_grow=False, seed=3):
    """A random state dict in the public file's layout (encoder and decoder keys)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) * 0.05
             for k, v in TAEHVDecoder().state_dict().items()}
    state |= {k: torch.randn(s, generator=g) * 0.05 for k, s in public_encoder_shapes().items()}
    if stride2_first_grow:  # files whose first TGrow was trained with stride 2
        state["decoder.7.conv.weight"] = torch.randn(512, 256, 1, 1, generator=g) * 0.05
    path = tmp_path / name
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path, state


def sequential_reference(model: TAEHVDecoder, latents: torch.Tensor) -> torch.Tensor:
    """The public streaming order: frame by frame, depth first, each MemBlock fed its previous
    input (zeros at the start), TGrow's time steps visited in order; first 3 outputs dropped."""
    layers, memory, outs = list(model.decoder), {}, []

    def run(i, x):
        for j in range(i, len(layers)):
            layer = layers[j]
            if isinstance(layer, MemBlock):
                past = memory.get(j, torch.zeros_like(x))
                memory[j] = x
                x = layer(x, past)
            elif isinstance(layer, TGrow):
                for step in layer.conv(x).chunk(layer.stride, dim=1):
                    run(j + 1, step)
                return
            else:
                x = layer(x)
        outs.append(x)

    for t in range(latents.shape[1]):
        run(0, latents[:, t])
    return torch.stack(outs[3:], dim=1).clamp(0, 1) * 2 - 1


def latents(frames=5, seed=1):
    return torch.randn(2, frames, 16, 4, 6, generator=torch.Generator().manual_seed(seed))


def test_public_layout_loads_and_keys_match():
    model = TAEHVDecoder()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert all(shapes[k] == s for k, s in PUBLIC_DECODER_KEYS.items())
    assert all(k.startswith("decoder.") for k in shapes)


@pytest.mark.parametrize("name", ["taew2_1.pth", "taew2_1.safetensors"])
def test_loads_the_public_file_and_decodes_like_the_public_order(tmp_path, name):
    path, state = public_file(tmp_path, name)
    model = load_taehv(path)
    assert torch.equal(model.decoder[8].weight, state["decoder.8.weight"])
    z = latents()
    with torch.no_grad():
        whole = model.decode(z)
        ref = sequential_reference(model, z)
    assert whole.shape == (2, 4 * 5 - 3, 3, 32, 48)
    torch.testing.assert_close(whole, ref, rtol=1e-4, atol=1e-5)
    assert whole.min() >= -1 and whole.max() <= 1 and whole.std() > 0


def test_stream_of_blocks_equals_one_decode():
    model = random_taehv(seed=2)
    z = latents(frames=7, seed=4)
    with torch.no_grad():
        whole = model.decode(z)
        stream = model.stream_decoder()
        parts = [stream.decode(z[:, :1]), stream.decode(z[:, 1:4]), stream.decode(z[:, 4:])]
    assert [p.shape[1] for p in parts] == [1, 12, 12]
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-4, atol=1e-5)


def test_stride2_first_tgrow_uses_the_last_time_step(tmp_path):
    path, state = public_file(tmp_path, stride2_first_grow=True)
    model = load_taehv(path)
    assert torch.equal(model.decoder[7].conv.weight, state["decoder.7.conv.weight"][256:])


def test_missing_and_wrong_files_say_what_to_put_where(tmp_path):
    with pytest.raises(CheckpointError, match=r"not found: put taew2_1.pth there.*madebyollin"):
        load_taehv(tmp_path / "nope.pth")
    path, state = public_file(tmp_path)
    del state["decoder.22.bias"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing decoder.22.bias"):
        load_taehv(path)
    bad = tmp_path / "pickle.pth"
    torch.save({"x": object()}, bad)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_taehv(bad)


def test_bad_latents_are_refused():
    with pytest.raises(ValueError, match=r"latents \[B, F >= 1, 16, h, w\]"):
        random_taehv().decode(torch.zeros(1, 3, 8, 4, 6))


TINY = {"random_init": True, "num_layers": 2, "dim": 64, "num_heads": 4, "ffn_dim": 128,
        "freq_dim": 32, "text_dim": 32, "text_len": 8, "latent_height": 4, "latent_width": 6,
        "vae_dim": 8}


def wan(**params):
    from lrag_adapters.wan.backbone import WanBackbone
    from lrag_adapters.wan.presets import WanParams

    return WanBackbone(WanParams(**{**TINY, **params}))


def test_wan_backbone_decodes_with_taehv_when_asked(tmp_path):
    z = latents(frames=4, seed=5)
    light = wan(decoder="taehv")
    frames = light.stream_decoder()(z[:, :1])
    assert frames.shape == (2, 1, 3, 32, 48)
    path, state = public_file(tmp_path)
    loaded = wan(decoder="taehv", decoder_weights=str(path))  # a given file wins
    assert torch.equal(loaded.light_decoder.decoder[1].weight, state["decoder.1.weight"])
    vae = wan().stream_decoder()(z[:, :1])
    assert vae.shape == frames.shape  # same frame counts as the Wan VAE
    missing = wan(decoder="taehv", decoder_weights=str(tmp_path / "absent.pth"))
    with pytest.raises(CheckpointError, match="put taew2_1.pth there"):
        missing.stream_decoder()


def test_decoder_device_places_the_decoder_and_is_checked():
    """``decoder_device``: the VAE / TAEHV live there and take the latents there; the frames
    are the same as on the compute device. On this machine only the CPU exists: a GPU that is
    not there is refused by name, before anything runs."""
    from lrag_framework.interfaces import ComponentError
    from lrag_framework.outputs.streaming import VideoStreams
    from pydantic import ValidationError

    z = latents(frames=4, seed=5)
    for decoder in ("vae", "taehv"):
        here, there = wan(decoder=decoder), wan(decoder=decoder, decoder_device="cpu")
        assert there.decode_device == torch.device("cpu") == here.decode_device
        assert torch.equal(here.stream_decoder()(z), there.stream_decoder()(z))
    streams = VideoStreams(there, torch.device("cpu"), None, 8, 1, True)
    assert streams.decode_device == torch.device("cpu")
    if torch.cuda.device_count() < 8:
        with pytest.raises(ComponentError, match="decoder_device: device cuda:7"):
            wan(decoder_device="cuda:7").to("cpu")
    with pytest.raises(ValidationError, match="decoder_device"):
        wan(decoder_device="gpu1")


def test_float8_is_refused_on_cpu_with_the_reason():
    with pytest.raises(ValueError, match=r"float8 needs a CUDA device .* on cpu"):
        wan(quantize="float8").to("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="float8 linear layers need CUDA")
def test_float8_linears_run_close_to_bf16_on_cuda():
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        pytest.skip("float8 needs compute capability >= 8.9")
    pytest.importorskip("torchao")
    x = torch.randn(2, 3, 16, 4, 6, device="cuda", dtype=torch.bfloat16)
    outs = []
    for q in ("none", "float8"):
        bb = wan(quantize=q, compile=False, dim=256, ffn_dim=512).to("cuda", torch.bfloat16)
        from lrag_framework.interfaces import Context

        ctx = Context(kv=torch.zeros(2, 2, 2, 0, 6, 4, 64), frame_ids=torch.zeros(2, 0).long(),
                      positions=torch.zeros(2, 0).long(), roles=torch.zeros(2, 0).long(),
                      valid=torch.ones(2, 0, dtype=torch.bool), block_start=0,
                      block_positions=torch.arange(3).expand(2, -1))
        cond = bb.encode_conditioning([torch.randn(8, 32, generator=torch.Generator()
                                                   .manual_seed(0))] * 2, 3)
        outs.append(bb.denoise(x, torch.full((2,), 500.0), cond, bb.prepare(ctx)))
    rel = (outs[1] - outs[0]).norm() / outs[0].norm()
    assert 0 < rel < 0.2


def test_vae_channels_last_decodes_as_the_default_layout():
    from lrag_adapters.wan.vae import VAEConfig, random_vae

    z = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(8))
    plain = random_vae(VAEConfig(dim=8))
    fast = random_vae(VAEConfig(dim=8)).channels_last()
    assert fast.conv2.weight.is_contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        torch.testing.assert_close(fast.decode(z), plain.decode(z), rtol=1e-4, atol=1e-5)
