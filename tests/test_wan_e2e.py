"""Text -> embeddings -> latents -> streamed mp4 through ``run(config)``, on tiny checkpoints in
the public Wan2.1 base-folder layout: a prompt schedule, an image start frame, retrieval kept
inside a prompt segment, and the prompt cache."""
import json

import numpy as np
import pytest
import torch

import lrag_framework
from lrag_adapters.wan import text_encoder as te
from lrag_adapters.wan.vae import VAEConfig, random_vae
from test_wan_text import WORDS

pytest.importorskip("tokenizers", reason="the `wan` extra")
av = pytest.importorskip("av")

T5 = {"vocab": 64, "dim": 24, "dim_attn": 24, "dim_ffn": 32, "num_heads": 4, "num_layers": 2,
      "text_len": 8}
DIT = {"num_layers": 2, "dim": 32, "num_heads": 2, "ffn_dim": 48, "freq_dim": 16,
       "text_dim": 24, "text_len": 8, "latent_channels": 16, "latent_height": 4,
       "latent_width": 6}  # pixels 32 x 48
FRAMES = 16  # latent frames: the image, then blocks starting at 1, 4, 7, 10, 13
CAT, DOG = "a red cat", "a dog runs"


def write_base_folder(folder):
    """Every file of a Wan2.1 base folder at tiny sizes: DiT (config.json + safetensors), umT5
    (.pth) and its tokenizer folder, VAE (.pth)."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    from lrag_adapters.wan.backbone import WanBackbone
    from lrag_adapters.wan.presets import SelfForcingParams

    folder.mkdir()
    dit = WanBackbone(SelfForcingParams(random_init=True, **DIT))
    dit.to("cpu")
    (folder / "config.json").write_text(json.dumps(
        {"_class_name": "WanModel", "dim": 32, "eps": 1e-6, "ffn_dim": 48, "freq_dim": 16,
         "in_dim": 16, "model_type": "t2v", "num_heads": 2, "num_layers": 2, "out_dim": 16,
         "text_len": 8}))
    save_file(dit.model.state_dict(), str(folder / "diffusion_pytorch_model.safetensors"))
    torch.save(te.random_umt5(te.T5Config(**T5), seed=3).state_dict(), folder / te.CHECKPOINT)
    torch.save(random_vae(VAEConfig(dim=8), seed=4).state_dict(), folder / "Wan2.1_VAE.pth")
    tok = folder / te.TOKENIZER_DIR
    tok.mkdir(parents=True)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [(w, -2.0) for w in WORDS] + [(ch, -5.0) for ch in "abcdefghijklmnopqrstuvwxyz"]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    backend.add_special_tokens(["<pad>", "</s>", "<unk>"])
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)])
    backend.save(str(tok / "tokenizer.json"))
    (tok / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan") / "Wan2.1-T2V-1.3B"
    write_base_folder(folder)
    return folder


def config(base, tmp_path, image):
    return {
        "backbone": {"name": "self_forcing", "params": {
            "base_dir": str(base), "generator_ckpt": None, "window": 6, "sink": 1,
            "text_encoder_sizes": T5, "prompt_cache": str(tmp_path / "cache"), **DIT}},
        "retrieval": {"k": 2, "recency": 0, "cross_segments": False},
        "generation": {"num_frames": FRAMES, "batch_size": 2},
        "conditionings": [CAT, [{"start": 0, "prompt": CAT}, {"start": 5, "prompt": DOG}]],
        "prefix": {"source": "image", "path": str(image)},
        "output": {"root": str(tmp_path / "runs"), "name": "t2v", "video_scale": 1, "fps": 16},
        "device": "cpu",
    }


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :, 0] = np.linspace(0, 255, 60, dtype=np.uint8)  # a red ramp, left to right
    Image.fromarray(pixels).save(tmp_path / "start.png")
    return tmp_path / "start.png"


def frames_of(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def backbone_of(cfg):
    from lrag_framework.generation.pipeline import Pipeline

    return Pipeline(lrag_framework.load_config(cfg)).setup(warm_up=False).backbone


def test_text_to_streamed_mp4_with_schedule_and_image_start(base, tmp_path, image):
    result = lrag_framework.run(config(base, tmp_path, image))
    mode_dir = result.run_dir / "retrieval"
    for s in range(2):
        video = frames_of(mode_dir / f"stream_{s:03d}.mp4")
        assert video.shape == (1 + 4 * (FRAMES - 1), 32, 48, 3)
    assert not list(result.run_dir.rglob("*.partial*"))
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # two distinct prompts

    backbone = backbone_of(config(base, tmp_path, image))
    latents = result.latents["retrieval"]
    from lrag_framework.outputs.media import read_image

    start = backbone.encode(read_image(image, (32, 48))[None, None])
    torch.testing.assert_close(latents[:, :1], start.expand(2, -1, -1, -1, -1))
    stream = backbone.stream_decoder()  # blocks as the engine made them: 1, 3, 3, 3, 3, 3
    streamed = torch.cat([stream(b) for b in latents.split([1, 3, 3, 3, 3, 3], dim=1)], dim=1)
    torch.testing.assert_close(streamed, backbone.decode(latents), rtol=0, atol=0)

    log = [json.loads(line) for line in (mode_dir / "retrieval.jsonl").read_text().splitlines()]
    segments = {e["block_start"]: e["segment"] for e in log}
    assert segments[4] == [0, 0] and segments[7] == [0, 1]  # the switch at 5 waits for block 7
    late = [e for e in log if e["block_start"] >= 10]
    assert late and all(i >= 7 for e in late for i in e["ids"][1])  # stream 1: its segment only
    assert any(i < 7 for e in late for i in e["ids"][0])


def test_cached_prompts_skip_the_encoder(base, tmp_path, image, monkeypatch):
    cfg = config(base, tmp_path, image)
    cfg["output"]["video"] = False
    lrag_framework.run(cfg)

    def fail(*args, **kwargs):
        raise AssertionError("the encoder was loaded for a cached prompt")

    monkeypatch.setattr(te, "load_umt5", fail)
    lrag_framework.run({**cfg, "output": {**cfg["output"], "name": "again"}})


def test_cli_names_a_missing_checkpoint_without_a_traceback(tmp_path, capsys):
    from lrag_framework.cli import main

    cfg = {"backbone": {"name": "longlive", "params": {"base_dir": str(tmp_path / "nowhere"),
                                                       "generator_ckpt": str(tmp_path / "g.pt")}},
           "output": {"root": str(tmp_path)}, "device": "cpu"}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main(["run", str(tmp_path / "c.json"), "--prompt", CAT]) == 2
    err = capsys.readouterr().err
    assert "g.pt not found" in err and "hf download" in err and "Traceback" not in err


def test_a_missing_vae_is_one_error_before_the_run_with_the_way_out(base, tmp_path, capsys):
    """No Wan2.1_VAE.pth: `lrag run` and `lrag validate` name the file, where it goes and
    `--set output.video=false`, before any folder is made; with that set the run completes
    without a video (the VAE is never needed)."""
    import shutil

    from lrag_framework.cli import main

    no_vae = tmp_path / "Wan2.1-T2V-1.3B"
    shutil.copytree(base, no_vae, ignore=shutil.ignore_patterns("Wan2.1_VAE.pth"))
    cfg = config(no_vae, tmp_path, image=None)
    del cfg["prefix"]
    cfg["generation"] = {"num_frames": 7, "batch_size": 1}
    cfg["conditionings"], cfg["retrieval"] = [CAT], {"enabled": False}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    for command in ("run", "validate"):
        assert main([command, str(tmp_path / "c.json")]) == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert f"{no_vae / 'Wan2.1_VAE.pth'} not found" in lines[0]
        assert "backbone.params.vae_ckpt" in lines[0] and "hf download" in lines[0]
        assert lines[0].endswith("--set output.video=false")
        assert not (tmp_path / "runs").exists()
    assert main(["run", str(tmp_path / "c.json"), "--set", "output.video=false"]) == 0
    run_dir = tmp_path / "runs" / "t2v"
    assert (run_dir / "summary.json").is_file() and not list(run_dir.rglob("*.mp4"))


def clip(path, frames):
    """An mp4 of ``frames`` frames at the tiny Wan's pixel size (32 x 48), a moving ramp."""
    from lrag_framework.outputs.media import StreamingVideoWriter

    ramp = np.linspace(0, 255, 48, dtype=np.uint8)
    with StreamingVideoWriter(path, fps=16) as writer:
        for t in range(frames):
            frame = np.zeros((1, 32, 48, 3), np.uint8)
            frame[..., 0], frame[..., 1] = np.roll(ramp, 3 * t), 6 * t % 256
            writer.append(frame)
    return path


def test_a_video_start_of_other_than_1_plus_4k_frames_is_cut_to_whole_latent_frames(
        base, tmp_path, capsys):
    """`lrag run --video` with a 7-frame clip starts from its first 5 frames (2 latent frames);
    a clip longer than the run is refused before anything is written."""
    from lrag_framework.cli import main
    from lrag_framework.outputs.media import read_video

    cfg = config(base, tmp_path, image=None)
    del cfg["prefix"]
    cfg["generation"] = {"num_frames": 8, "batch_size": 1}
    cfg["conditionings"], cfg["retrieval"] = [CAT], {"enabled": False}
    cfg["output"]["video"] = False
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    seven = clip(tmp_path / "seven.mp4", 7)
    assert main(["run", str(tmp_path / "c.json"), "--video", str(seven)]) == 0
    saved = lrag_framework.load_config(tmp_path / "runs" / "t2v" / "config.yaml")
    assert saved.prefix.source == "video"
    from safetensors.torch import load_file

    latents = load_file(tmp_path / "runs" / "t2v" / "native" / "latents.safetensors")
    start = backbone_of(cfg).encode(read_video(seven, (32, 48))[None, :5])  # [1, 2, 16, 4, 6]
    torch.testing.assert_close(latents["latents"][:, :2], start)
    capsys.readouterr()
    long = clip(tmp_path / "long.mp4", 1 + 4 * 9)  # 10 latent frames for a run of 8
    assert main(["run", str(tmp_path / "c.json"), "--video", str(long), "--set",
                 "output.name=long"]) == 2
    err = capsys.readouterr().err
    assert "do not fit generation.num_frames 8" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "long").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (side-stream decoding)")
def test_side_stream_decoding_writes_the_decoded_frames_in_order(base, tmp_path, image):
    from lrag_framework.outputs.media import to_uint8_frames

    cfg = config(base, tmp_path, image)
    cfg["device"] = "cuda"
    result = lrag_framework.run(cfg)
    backbone = backbone_of(cfg)
    latents = result.latents["retrieval"]
    for s in range(2):
        video = frames_of(result.run_dir / "retrieval" / f"stream_{s:03d}.mp4")
        expected = to_uint8_frames(backbone.decode(latents[s:s + 1].cuda())[0])
        assert video.shape == expected.shape
        video, expected = video.astype(float), expected.astype(float)
        error = np.abs(video - expected).mean(axis=(1, 2, 3))  # h264 of noise-like frames:
        shifted = np.abs(video[4:] - expected[:-4]).mean()  # ~16 aligned, ~36 a latent off (CPU)
        assert error.max() < 22 and error.mean() < 0.7 * shifted


def test_a_conditioned_key_on_text_prompts_is_refused_up_front(base, tmp_path, image, capsys):
    """A prompt says nothing per frame, so `pose` is refused by `lrag validate` and `lrag run`
    before anything is generated or written."""
    from lrag_framework.cli import main

    cfg = {**config(base, tmp_path, image), "embedder": {"name": "pose"}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    for command in ("validate", "run"):
        assert main([command, str(tmp_path / "c.json")]) == 2
        err = capsys.readouterr().err
        assert "embedder 'pose'" in err and "has no per-frame signals" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()
