"""The Wan2.1 VAE: public checkpoint layout, strict loading, shapes, causality, normalisation,
and streamed decode == one-shot decode."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from lrag_adapters.wan.vae import (LATENT_MEAN, LATENT_STD, VAEConfig, WanVAE, load_vae,
                                   random_vae)

SMALL = VAEConfig(dim=8)  # widths 8/16/32/32, 16 latent channels, the public layout
H = W = 16  # pixels; latents 2x2

# Transcribed from the public Wan2.1_VAE.pth layout (names and shapes; 194 tensors in all).
PUBLIC_KEYS = {
    "encoder.conv1.weight": (96, 3, 3, 3, 3),
    "encoder.conv1.bias": (96,),
    "encoder.downsamples.0.residual.0.gamma": (96, 1, 1, 1),
    "encoder.downsamples.0.residual.2.weight": (96, 96, 3, 3, 3),
    "encoder.downsamples.2.resample.1.weight": (96, 96, 3, 3),
    "encoder.downsamples.3.shortcut.weight": (192, 96, 1, 1, 1),
    "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
    "encoder.downsamples.8.time_conv.bias": (384,),
    "encoder.middle.0.residual.6.weight": (384, 384, 3, 3, 3),
    "encoder.middle.1.norm.gamma": (384, 1, 1),
    "encoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
    "encoder.middle.1.proj.weight": (384, 384, 1, 1),
    "encoder.head.0.gamma": (384, 1, 1, 1),
    "encoder.head.2.weight": (32, 384, 3, 3, 3),
    "conv1.weight": (32, 32, 1, 1, 1),
    "conv2.weight": (16, 16, 1, 1, 1),
    "decoder.conv1.weight": (384, 16, 3, 3, 3),
    "decoder.middle.1.to_qkv.bias": (1152,),
    "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
    "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
    "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
    "decoder.upsamples.7.time_conv.bias": (768,),
    "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3),
    "decoder.upsamples.14.residual.6.weight": (96, 96, 3, 3, 3),
    "decoder.head.0.gamma": (96, 1, 1, 1),
    "decoder.head.2.weight": (3, 96, 3, 3, 3),
}
NOT_PUBLIC = ("encoder.downsamples.2.time_conv.weight", "decoder.upsamples.11.time_conv.weight",
              "decoder.middle.1.norm.bias")


@pytest.fixture(scope="module")
def vae():
    return random_vae(SMALL, seed=1)


@pytest.fixture(scope="module")
def latents():
    return torch.randn(1, 16, 9, H // 8, W // 8, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def decoded(vae, latents):
    return vae.decode(latents)


def video(frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, H, W, generator=g) * 2 - 1


def test_state_dict_is_the_public_layout():
    with torch.device("meta"):
        full = WanVAE()
    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    assert len(shapes) == 194
    assert {k: shapes.get(k) for k in PUBLIC_KEYS} == PUBLIC_KEYS
    assert not set(NOT_PUBLIC) & set(shapes)
    assert set(random_vae(SMALL).state_dict()) == set(shapes)  # names do not depend on sizes


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_tiny_checkpoint_loads_strictly(tmp_path, vae, suffix):
    path = tmp_path / f"Wan2.1_VAE{suffix}"
    state = {k: v.contiguous() for k, v in vae.state_dict().items()}
    torch.save(state, path) if suffix == ".pth" else save_file(state, path)
    loaded = load_vae(path, SMALL)
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = video(5)
    assert torch.equal(loaded.encode(x), vae.encode(x))


@pytest.mark.parametrize("corrupt, named", [
    (lambda s: s.pop("encoder.middle.1.to_qkv.weight"), "missing encoder.middle.1.to_qkv.weight"),
    (lambda s: s.update({"decoder.upsamples.3.time_conv.weight": torch.zeros(2, 2, 3, 1, 1)}),
     "decoder.upsamples.3.time_conv.weight [2, 2, 3, 1, 1] (model [64, 32, 3, 1, 1])"),
    (lambda s: s.update({"decoder.extra.weight": torch.zeros(1)}), "unexpected decoder.extra"),
])
def test_mismatched_checkpoint_gives_one_clear_error(tmp_path, vae, corrupt, named):
    state = dict(vae.state_dict())
    corrupt(state)
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        load_vae(path, SMALL)
    message = str(err.value)
    assert str(path) in message and named in message and "hf download Wan-AI" in message


def test_missing_file_names_the_download(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.pth not found.*hf download Wan-AI/Wan2.1-T2V"):
        load_vae(tmp_path / "nope.pth", SMALL)


def test_random_vae_is_seeded_and_leaves_global_rng_alone():
    before = torch.random.get_rng_state()
    a, b = random_vae(SMALL, seed=3), random_vae(SMALL, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


@pytest.mark.parametrize("k", [0, 1, 3])
def test_shapes(vae, k):
    z = vae.encode(video(1 + 4 * k))
    assert z.shape == (1, 16, 1 + k, H // 8, W // 8)
    x = vae.decode(z)
    assert x.shape == (1, 3, 1 + 4 * k, H, W) and x.abs().max() <= 1


@pytest.mark.parametrize("shape", [(1, 3, 4, H, W), (1, 3, 5, 12, W), (1, 4, 5, H, W),
                                   (3, 5, H, W)])
def test_encode_rejects_bad_videos(vae, shape):
    with pytest.raises(ValueError, match=rf"got \[{', '.join(map(str, shape))}\]"):
        vae.encode(torch.zeros(shape))


def test_decode_rejects_bad_latents(vae):
    with pytest.raises(ValueError, match=r"\[B, 16, F >= 1, h, w\], got \[1, 8, 2, 2, 2\]"):
        vae.decode(torch.zeros(1, 8, 2, 2, 2))


@pytest.mark.parametrize("blocks", [(3, 3, 3), (1, 3, 2, 3), (9,)])
def test_stream_decode_equals_one_shot(vae, latents, decoded, blocks):
    stream = vae.stream_decoder()
    parts = [stream.decode(b) for b in latents.split(blocks, dim=2)]
    assert [p.shape[2] for p in parts] == [4 * n - 3 * (i == 0) for i, n in enumerate(blocks)]
    assert torch.equal(torch.cat(parts, dim=2), decoded)
    assert max(past.shape[2] for past in stream.cache.past.values()) <= 2  # bounded state


@given(st.lists(st.integers(1, 4), min_size=1, max_size=9))
def test_stream_decode_any_partition(vae, latents, decoded, sizes):
    blocks, left = [], latents.shape[2]
    for n in sizes:
        if left:
            blocks.append(min(n, left))
            left -= blocks[-1]
    blocks += [left] if left else []
    stream = vae.stream_decoder()
    out = torch.cat([stream.decode(b) for b in latents.split(blocks, dim=2)], dim=2)
    assert torch.equal(out, decoded)


@pytest.mark.parametrize("chunk", [2, None])
@pytest.mark.parametrize("blocks", [(3, 3, 3), (1, 3, 2, 3), (9,)])
def test_chunked_stream_decode_matches_frame_by_frame(vae, latents, decoded, blocks, chunk):
    """Several latent frames per decoder pass (None: a whole block after the first frame) give
    upstream's frame-by-frame pixels up to float rounding, with the same bounded cache."""
    stream = vae.stream_decoder(chunk)
    out = torch.cat([stream.decode(b) for b in latents.split(blocks, dim=2)], dim=2)
    torch.testing.assert_close(out, decoded, rtol=0, atol=1e-5)
    assert max(past.shape[2] for past in stream.cache.past.values()) <= 2


def test_chunk_must_be_positive(vae):
    with pytest.raises(ValueError, match="chunk must be >= 1 latent frame"):
        vae.stream_decoder(0)


def test_stream_carries_the_cache(vae, latents, decoded):
    """A fresh decoder on the second block gives other pixels: the history matters."""
    fresh = vae.stream_decoder().decode(latents[:, :, 3:6])
    assert not torch.allclose(fresh[:, :, -4:], decoded[:, :, 17:21], atol=1e-3)


@pytest.mark.parametrize("j", [1, 2, 3])
def test_encoder_is_causal(vae, j):
    """Latent frame i sees pixel frames up to 4i: changing later frames keeps the first j."""
    a = video(13, seed=0)
    b = a.clone()
    b[:, :, 4 * (j - 1) + 1:] = video(13, seed=1)[:, :, 4 * (j - 1) + 1:]
    za, zb = vae.encode(a), vae.encode(b)
    assert torch.equal(za[:, :, :j], zb[:, :, :j])
    assert not torch.allclose(za[:, :, j], zb[:, :, j], atol=1e-4)


def test_latents_are_normalised_with_the_public_constants(vae, latents):
    assert (LATENT_MEAN[0], LATENT_STD[0], LATENT_MEAN[-1], LATENT_STD[-1]) == (
        -0.7571, 2.8184, -0.2921, 1.9160)
    raw = WanVAE(VAEConfig(dim=8, latent_mean=(0.0,) * 16, latent_std=(1.0,) * 16)).eval()
    raw.load_state_dict(vae.state_dict())
    x = video(5)
    mu = raw.encode(x)
    z = vae.encode(x)
    torch.testing.assert_close(z[:, 0], (mu[:, 0] + 0.7571) / 2.8184, rtol=0, atol=0)
    torch.testing.assert_close(z, (mu - torch.tensor(LATENT_MEAN).view(1, 16, 1, 1, 1))
                               / torch.tensor(LATENT_STD).view(1, 16, 1, 1, 1))
    torch.testing.assert_close(vae.decode(z), raw.decode(mu), rtol=1e-4, atol=1e-5)


def test_runs_in_the_weights_dtype(vae):
    half = random_vae(SMALL, seed=1).to(torch.bfloat16)
    x = video(5)
    z = half.encode(x)
    assert z.dtype == torch.bfloat16 and half.decode(z).dtype == torch.bfloat16
    torch.testing.assert_close(z.float(), vae.encode(x), rtol=0.05, atol=0.05)


def test_matches_the_public_implementation():
    """Values the public Wan2.1 ``wan/modules/vae.py`` (commit 9737cba, run once outside the
    suite) gives for these weights and this video: latents z[0, ::5, :, 1, 0] and the decoded
    pixels x[0, :, :, 7, 9] of those latents (see docs/vae.md)."""
    model = random_vae(SMALL, seed=1)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    x = torch.rand(1, 3, 9, H, W, generator=torch.Generator().manual_seed(5)) * 2 - 1
    z = model.encode(x)
    public_z = [[0.233408, 0.404016, 1.102193], [-0.366406, -1.133442, 0.613932],
                [0.216516, -0.03571, 0.813792], [-0.046046, -0.016069, -0.037558]]
    public_x = [[0.320383, 0.239399, -1.0, -1.0, 0.2528, 0.067178, -0.588747, 0.662897, -0.37537],
                [0.248219, 0.373329, -0.819301, -0.950346, -0.391585, -0.388653, 0.968703,
                 0.281671, -1.0],
                [0.357203, 0.829319, -0.590844, 0.791355, 0.158034, 0.451232, -0.87418, 1.0,
                 0.312961]]
    torch.testing.assert_close(z[0, ::5, :, 1, 0], torch.tensor(public_z), rtol=0, atol=2e-5)
    torch.testing.assert_close(model.decode(z)[0, :, :, 7, 9], torch.tensor(public_x), rtol=0,
                               atol=2e-5)


@pytest.mark.parametrize("chunk, traced", [(1, 2), (3, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_decoder_traces_one_graph_per_chunk_size(latents, decoded, channels_last, chunk,
                                                          traced):
    """The causal cache has one layout from the first latent frame on (every layer's past is
    its full length, zeros before the start, in dense copies), so a compiled decoder traces one
    graph for a stream's first frame and one per chunk size after it (one frame a pass: one;
    3-frame blocks: the first block's other 2 frames, then 3), and still decodes exactly."""
    model = random_vae(SMALL, seed=1)
    if channels_last:
        model.channels_last()
    graphs = []

    def count(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model.decode_frames = torch.compile(model.decode_frames, backend=count, dynamic=False)
    stream = model.stream_decoder(chunk)
    out = torch.cat([stream.decode(latents[:, :, i:i + 3]) for i in range(0, 9, 3)], dim=2)
    torch._dynamo.reset()
    assert len(graphs) == traced
    torch.testing.assert_close(out, decoded, rtol=0, atol=1e-5)
