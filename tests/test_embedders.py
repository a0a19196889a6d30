"""Embedders ``avg_pool`` and ``latent_ae``: shapes, normalisation, the public key layout, the
weights folder round trip, the public ``.pt`` checkpoint and its strict key report."""
from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from lrag_embedders import plugin
from lrag_embedders.ae_weights import load_latent_ae
from lrag_embedders.latent_ae import AEShape, LatentAE, LatentAEEmbedder
from lrag_embedders.plugin import AvgPoolParams, LatentAEParams, PoseParams
from lrag_framework.interfaces import Embedder, TrainableEmbedder
from lrag_framework.testing import check_embedder

SMALL = {"in_channels": 3, "spatial_h": 9, "spatial_w": 14, "latent_dim": 12,
         "hidden_dims": [4, 8]}


def build_ae(**params) -> LatentAEEmbedder:
    return plugin.build_latent_ae(LatentAEParams(**{**SMALL, **params}))


def frames(n=5, shape=(3, 9, 14), seed=0) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def public_checkpoint(path, model: LatentAE, **changes):
    """A file as LongLive-RAG's ae/train.py writes it: epoch, model, optimizer, scaler, config."""
    state = dict(model.state_dict())
    state.update(changes.pop("state", {}))
    for key in changes.pop("drop", []):
        del state[key]
    opt = torch.optim.AdamW(model.parameters())
    config = {**model.shape.to_json(), "data_dir": "datasets", "lr": 3e-4, "tag": "",
              "delta_margin": 0.85, "use_amp": True, "resume": ""}
    torch.save({"epoch": 3, "model": state, "optimizer": opt.state_dict(),
                "scaler": {"scale": 65536.0, "growth_factor": 2.0}, "config": config,
                "val_loss": 0.25, **changes}, path)
    return path


# ---------------------------------------------------------------------------- avg_pool

def test_avg_pool_is_the_normalised_spatial_mean():
    emb = plugin.build_avg_pool(AvgPoolParams())
    x = frames(4, (6, 5, 7))
    d = emb.embed(x)
    assert isinstance(emb, Embedder) and d.shape == (4, 6) and d.dtype == torch.float32
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(d, torch.nn.functional.normalize(x.mean(dim=(2, 3)), dim=-1))
    torch.testing.assert_close(emb.embed(x * 7.5), d)  # a brighter frame, the same descriptor
    torch.testing.assert_close(emb.embed(x.to(torch.bfloat16)), d, atol=2e-2, rtol=0)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\], got \[6, 5, 7\]"):
        emb.embed(x[0])
    with pytest.raises(ValidationError):
        AvgPoolParams(size=3)


# ---------------------------------------------------------------------------- latent_ae

@pytest.mark.parametrize("shape", [(3, 9, 14, 12, (4, 8)), (2, 8, 8, 5, (4,)),
                                   (1, 17, 5, 7, (4, 4, 8))])
def test_latent_ae_shapes_and_unit_embeddings(shape):
    c, h, w, d, dims = shape
    s = AEShape(c, h, w, d, dims)
    model = LatentAE(s)
    x = frames(3, (c, h, w))
    recon, z = model(x)
    assert recon.shape == x.shape and z.shape == (3, d)
    emb = LatentAEEmbedder(model)
    e = emb.embed(x)
    assert e.shape == (3, d) and e.dtype == torch.float32 and not e.requires_grad
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(e, torch.nn.functional.normalize(z.detach(), dim=-1))
    assert emb.to("cpu") is emb


def test_latent_ae_rejects_frames_of_another_shape():
    with pytest.raises(ValueError, match=r"frames \[N, 3, 9, 14\], got \[2, 3, 9, 13\]"):
        build_ae().embed(torch.zeros(2, 3, 9, 13))


def test_latent_ae_init_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = build_ae(), build_ae()
    assert torch.rand(1) == before
    x = frames()
    assert torch.equal(a.embed(x), b.embed(x))
    assert not torch.equal(a.embed(x), build_ae(init_seed=1).embed(x))


def test_state_dict_keys_follow_the_public_module():
    """Facts from qixinhu11/LongLive-RAG ae/model.py (LatentAE with its default AEConfig)."""
    with torch.device("meta"):
        state = LatentAE(AEShape()).state_dict()
    assert len(state) == 68
    assert sum(v.numel() for v in state.values()) == 30_231_696
    expected = {"encoder.conv_stack.0.weight": [64, 16, 3, 3],
                "encoder.conv_stack.1.weight": [64],
                "encoder.conv_stack.3.block.5.weight": [64, 64, 3, 3],
                "encoder.conv_stack.4.weight": [128, 64, 3, 3],
                "encoder.conv_stack.11.block.3.bias": [256],
                "encoder.final_norm.0.weight": [256],
                "encoder.fc.weight": [1024, 256],
                "decoder.fc.0.weight": [26624, 1024],
                "decoder.upsample_stack.1.weight": [128, 256, 3, 3],
                "decoder.upsample_stack.4.block.2.weight": [128, 128, 3, 3],
                "decoder.upsample_stack.9.block.5.bias": [64],
                "decoder.final.1.weight": [16, 64, 3, 3]}
    assert {k: list(state[k].shape) for k in expected} == expected


def test_weights_folder_round_trip(tmp_path):
    emb = build_ae(init_seed=5)
    emb.save(tmp_path / "ae")
    config = json.loads((tmp_path / "ae" / "config.json").read_text())
    assert config["name"] == "latent_ae" and config["schema_version"] == 1
    assert config["lrag_version"] and config["params"] == {**SMALL}
    loaded = plugin.build_latent_ae(LatentAEParams(weights=str(tmp_path / "ae")))
    assert loaded.shape == emb.shape  # the architecture comes from config.json
    x = frames()
    assert torch.equal(loaded.embed(x), emb.embed(x))
    # given params that agree are fine; one that disagrees is named
    plugin.build_latent_ae(LatentAEParams(weights=str(tmp_path / "ae"), latent_dim=12))
    with pytest.raises(ValueError, match=r"latent_dim=1024 \(weights: 12\)"):
        plugin.build_latent_ae(LatentAEParams(weights=str(tmp_path / "ae"), latent_dim=1024))


def test_weights_folder_of_another_schema_or_name_is_refused(tmp_path):
    build_ae().save(tmp_path / "ae")
    cfg_path = tmp_path / "ae" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "schema_version": 2}))
    with pytest.raises(ValueError, match="schema_version 2 is not supported"):
        load_latent_ae(tmp_path / "ae")
    cfg_path.write_text(json.dumps({**cfg, "name": "other"}))
    with pytest.raises(ValueError, match="name is 'other'"):
        load_latent_ae(tmp_path / "ae")
    (tmp_path / "ae" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="has no model.safetensors"):
        load_latent_ae(tmp_path / "ae")
    with pytest.raises(ValueError, match="does not exist"):
        load_latent_ae(tmp_path / "nothing")


def test_public_checkpoint_loads_with_its_architecture(tmp_path):
    model = LatentAE(AEShape(3, 9, 14, 12, (4, 8)))
    path = public_checkpoint(tmp_path / "ae_latent_mem.pt", model)
    emb = plugin.build_latent_ae(LatentAEParams(weights=str(path)))
    assert emb.shape == model.shape
    x = frames()
    expected = torch.nn.functional.normalize(model.encoder(x), dim=-1)
    torch.testing.assert_close(emb.embed(x), expected, rtol=0, atol=0)


def test_public_checkpoint_key_problems_are_named(tmp_path):
    model = LatentAE(AEShape(3, 9, 14, 12, (4, 8)))
    missing = public_checkpoint(tmp_path / "a.pt", model, drop=["encoder.fc.bias"])
    with pytest.raises(ValueError, match=r"missing encoder\.fc\.bias") as err:
        load_latent_ae(missing)
    assert "unexpected" not in str(err.value)
    extra = public_checkpoint(tmp_path / "b.pt", model,
                              state={"encoder.attn.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected encoder\.attn\.weight"):
        load_latent_ae(extra)
    bad = public_checkpoint(tmp_path / "c.pt", model, state={"encoder.fc.bias": torch.zeros(5)})
    with pytest.raises(ValueError, match=r"wrong shapes encoder\.fc\.bias \[5\] "
                                         r"\(model \[12\]\)"):
        load_latent_ae(bad)


class Payload:
    """Not a tensor or a plain value: a weights-only load must refuse to build it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_public_checkpoint_is_read_weights_only(tmp_path, capsys):
    model = LatentAE(AEShape(3, 9, 14, 12, (4, 8)))
    path = public_checkpoint(tmp_path / "evil.pt", model, extra=Payload())
    with pytest.raises(ValueError, match="cannot read a LongLive-RAG AE checkpoint.*pickled object"):
        load_latent_ae(path)
    assert "must never run" not in capsys.readouterr().out
    torch.save({"weights": model.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="expected a dict with a 'model' state dict"):
        load_latent_ae(tmp_path / "other.pt")


def test_plugin_registers_both_embedders_and_the_registry_builds_them(tmp_path):
    seen = {}
    plugin.register_embedders(lambda name, factory, model: seen.update({name: model}))
    assert seen == {"avg_pool": AvgPoolParams, "latent_ae": LatentAEParams, "pose": PoseParams}
    assert LatentAEParams().architecture() == {"in_channels": 16, "spatial_h": 60,
                                               "spatial_w": 104, "latent_dim": 1024,
                                               "hidden_dims": [64, 128, 256]}
    from lrag_framework.plugins import load_plugins

    registry = load_plugins()
    assert isinstance(registry.build("embedder", "avg_pool", {}), Embedder)
    emb = registry.build("embedder", "latent_ae", SMALL)
    assert emb.embed(frames()).shape == (5, 12)
    with pytest.raises(ValidationError):
        registry.build("embedder", "latent_ae", {"hidden_dims": []})


# ---------------------------------------------------------------------------- the kit's contract

def test_avg_pool_keeps_the_embedder_contract():
    check_embedder(lambda: plugin.build_avg_pool(AvgPoolParams()), (4, 6, 5))


def test_latent_ae_keeps_the_trainable_embedder_contract():
    """Also: gradients reach the model, save writes model.safetensors, and the ``weights``
    param loads the saved folder back to identical descriptors."""
    assert isinstance(build_ae(), TrainableEmbedder)
    check_embedder(build_ae, (3, 9, 14), load=lambda folder: build_ae(weights=folder),
                   max_examples=20)


def test_a_duck_typed_trainable_embedder_still_trains_with_a_deprecation_warning():
    from lrag_framework.config import ConfigError
    from lrag_framework.training.components import trainable_model

    class Old(Embedder):  # API 1: model + save, without TrainableEmbedder
        model = torch.nn.Linear(2, 2)

        def embed(self, latents):
            return latents.flatten(1)

        def save(self, folder):
            pass

    with pytest.warns(DeprecationWarning, match="subclass lrag_framework.interfaces"):
        assert trainable_model(Old(), "old") is Old.model
    with pytest.raises(ConfigError, match="'avg_pool' is not trainable"):
        trainable_model(plugin.build_avg_pool(AvgPoolParams()), "avg_pool")
