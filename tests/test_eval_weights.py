"""Weight-based metrics on tiny random checkpoints saved in the public Hugging Face layouts
(small configurations of the same transformers classes): loading, the HF cache, the LAION head,
VBench scores on videos with known answers, the feature cache and its invalidation."""
import json
import math
import os

import numpy as np
import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

from lrag_framework.evaluation import EvalConfig, evaluate_run  # noqa: E402
from lrag_framework.evaluation import extractors as ex  # noqa: E402
from lrag_framework.evaluation.weights import MissingWeights, model_folder  # noqa: E402
from lrag_framework.files import write_tensors  # noqa: E402
from lrag_framework.outputs.media import StreamingVideoWriter  # noqa: E402

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 2}
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "vocab_size": 64, "bos_token_id": 0, "eos_token_id": 1,
        "pad_token_id": 1}


def _seeded(seed, build):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def save_dino(path, seed=0):
    model = _seeded(seed, lambda: transformers.ViTModel(transformers.ViTConfig(
        **VISION, image_size=224, patch_size=16, qkv_bias=True)))
    model.save_pretrained(path)  # facebook/dino-vitb16 layout (ViTModel, with its pooler)


def save_dinov2(path, seed=0):
    model = _seeded(seed, lambda: transformers.Dinov2Model(transformers.Dinov2Config(
        **{k: v for k, v in VISION.items() if k != "intermediate_size"}, mlp_ratio=2,
        image_size=518, patch_size=14)))
    model.save_pretrained(path)


def save_clip(path, patch, projection, seed=0, as_bin=False):
    """A whole CLIPModel (text and vision towers) as openai/clip-vit-* ships it."""
    model = _seeded(seed, lambda: transformers.CLIPModel(transformers.CLIPConfig(
        text_config=TEXT, vision_config={**VISION, "image_size": 224, "patch_size": patch},
        projection_dim=projection)))
    model.save_pretrained(path)
    if as_bin:  # the same keys as pytorch_model.bin
        from safetensors.torch import load_file

        torch.save(load_file(str(path / "model.safetensors")), path / "pytorch_model.bin")
        (path / "model.safetensors").unlink()
    return model


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    save_dino(root / "dino")
    save_dinov2(root / "dinov2")
    save_clip(root / "clip_b32", patch=32, projection=16)
    save_clip(root / "clip_l14", patch=14, projection=24, as_bin=True)
    head = _seeded(0, lambda: torch.nn.Linear(24, 1))
    torch.save(head.state_dict(), root / "sa_0_4_vit_l_14_linear.pth")
    return {"dino": str(root / "dino"), "dinov2": str(root / "dinov2"),
            "clip_b32": str(root / "clip_b32"), "clip_l14": str(root / "clip_l14"),
            "aesthetic_head": str(root / "sa_0_4_vit_l_14_linear.pth")}


def scene(seed, size=64):
    """A smooth random image, uint8 [size, size, 3] (survives h264 well)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 4, 4, generator=gen)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear")
    return (img[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def write_video(path, frames, fps=8):
    with StreamingVideoWriter(path, fps) as w:
        w.append(np.stack(frames))


def test_clip_vision_tower_equals_the_whole_model(weights, tmp_path):
    model = save_clip(tmp_path / "clip", patch=32, projection=16)
    e = ex.Extractor("clip_b32", tmp_path / "clip", torch.device("cpu"))
    x = torch.rand(2, 3, 224, 224) * 255
    want = model.get_image_features(pixel_values=e.preprocess(x))
    want = getattr(want, "pooler_output", want)
    assert torch.allclose(e(x), want, atol=1e-5)
    binary = ex.Extractor("clip_l14", weights["clip_l14"], torch.device("cpu"))  # a .bin file
    assert binary(x).shape == (2, 24)


def test_dino_features_are_the_final_norm_cls_token(weights):
    e = ex.Extractor("dino", weights["dino"], torch.device("cpu"))
    ref = transformers.ViTModel.from_pretrained(weights["dino"]).eval()
    x = torch.rand(1, 3, 256, 320) * 255  # non-square: position embeddings interpolated
    want = ref(pixel_values=e.preprocess(x), interpolate_pos_encoding=True).last_hidden_state
    assert torch.allclose(e(x), want[:, 0], atol=1e-5)


def test_a_checkpoint_that_does_not_match_its_config_is_an_error(tmp_path):
    save_dino(tmp_path / "dino")
    cfg = json.loads((tmp_path / "dino" / "config.json").read_text())
    (tmp_path / "dino" / "config.json").write_text(json.dumps({**cfg, "hidden_size": 48}))
    with pytest.raises(ValueError, match="facebook/dino-vitb16"):
        ex.Extractor("dino", tmp_path / "dino", torch.device("cpu"))


def test_missing_weights_say_what_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingWeights, match="hf download facebook/dino-vitb16"):
        model_folder("dino", None)
    with pytest.raises(MissingWeights, match=str(tmp_path / "x")):
        model_folder("clip_b32", str(tmp_path / "x"))


def test_models_are_found_in_the_hugging_face_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hub" / "models--facebook--dinov2-base"
    save_dinov2(hub / "snapshots" / "abc123")
    (hub / "refs").mkdir(parents=True)
    (hub / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_folder("dinov2", None) == hub / "snapshots" / "abc123"


def test_aesthetic_head_key_layout(tmp_path):
    torch.save({"weight": torch.ones(1, 8), "bias": torch.zeros(1)}, tmp_path / "h.pth")
    head = ex.load_aesthetic_head(tmp_path / "h.pth")
    assert head(torch.ones(1, 8)).item() == pytest.approx(8.0)
    torch.save({"layers.0.weight": torch.ones(1, 8)}, tmp_path / "mlp.pth")
    with pytest.raises(ValueError, match="linear head"):
        ex.load_aesthetic_head(tmp_path / "mlp.pth")


def make_run(root, videos: dict, fps=8):
    """A run directory as the runner writes it (config, latents, mp4s) without ground truth."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump({
        "name": "t", "backbone": {"name": "tiny", "params": {}}, "conditionings": [None],
        "output": {"fps": fps}}))
    for mode, frames in videos.items():
        (root / mode).mkdir()
        write_video(root / mode / "stream_000.mp4", frames, fps)
        latents = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()[None] / 127.5 - 1
        write_tensors(root / mode / "latents.safetensors", {"latents": latents},
                      {"mode": mode, "streams": [{"stream": 0, "conditioning": 0}]})
    return root


def test_vbench_scores_identical_frames_and_a_cut(weights, tmp_path):
    still = [scene(1)] * 24
    cut = [scene(1)] * 12 + [scene(2)] * 12
    run = make_run(tmp_path / "run", {"native": still, "retrieval": cut})
    cfg = EvalConfig(weights=weights, clip_seconds=4.0, metrics=[
        "subject_consistency", "background_consistency", "aesthetic_quality",
        "subject_consistency_clip2clip", "first_failure"],
        first_failure=[{"measure": "subject_consistency", "threshold": 0.999}])
    result = evaluate_run(run, cfg)
    assert result["skipped"] == {}
    native, retrieval = result["modes"]["native"], result["modes"]["retrieval"]
    for metric in ("subject_consistency", "background_consistency"):
        assert native[metric]["value"] == pytest.approx(1.0, abs=1e-5)  # identical frames
        assert retrieval[metric]["value"] < 0.999
    assert len(retrieval["subject_consistency"]["streams"][0]["per_clip"]) == 1  # one 4 s clip
    assert native["subject_consistency_clip2clip"]["value"] is None  # a single clip
    ff = retrieval["first_failure"]["subject_consistency<0.999"]["streams"][0]
    assert ff["frame"] == 12 and ff["seconds"] == pytest.approx(1.5)  # the cut
    assert native["first_failure"]["subject_consistency<0.999"]["failed"] == 0
    aes = native["aesthetic_quality"]
    assert math.isfinite(aes["value"]) and len(aes["streams"][0]["per_clip"]) == 1
    assert (run / "eval" / "eval.json").is_file() and (run / "eval" / "metrics.png").is_file()


def test_features_are_cached_and_invalidated_by_the_weights(weights, tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", {"native": [scene(3)] * 8 + [scene(4)] * 8})
    cfg = EvalConfig(weights={**weights, "dino": str(tmp_path / "dino")},
                     metrics=["subject_consistency"])
    save_dino(tmp_path / "dino", seed=0)
    first = evaluate_run(run, cfg)["modes"]["native"]["subject_consistency"]["value"]
    cached = sorted(p.name for p in (run / "eval" / "features").iterdir())
    assert cached == ["native.stream_000.dino.safetensors"]

    def no_model(*a, **k):
        raise AssertionError("the model was built although the features are cached")

    monkeypatch.setattr(ex.Extractor, "__init__", no_model)
    again = evaluate_run(run, cfg)["modes"]["native"]["subject_consistency"]["value"]
    assert again == first
    save_dino(tmp_path / "dino", seed=1)  # other weights: the cache no longer applies
    with pytest.raises(AssertionError, match="was built"):
        evaluate_run(run, cfg)
    monkeypatch.undo()
    other = evaluate_run(run, cfg)["modes"]["native"]["subject_consistency"]["value"]
    assert other != first
    assert os.listdir(run / "eval" / "features") == ["native.stream_000.dino.safetensors"]
