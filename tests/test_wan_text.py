"""The Wan2.1 umT5 text encoder: public key layout, strict loading, tokenizer, masking, position
buckets, the prompt cache; against transformers / ftfy when those are importable."""
import html
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from lrag_adapters.wan import text_encoder as te
from lrag_adapters.wan.loading import CheckpointError
from lrag_framework.files import read_metadata, write_tensors
from lrag_adapters.wan.text_encoder import (
    T5Config,
    TextEncoder,
    Tokenizer,
    UMT5Encoder,
    clean_prompt,
    load_umt5,
    random_umt5,
    relative_buckets,
)
from safetensors import safe_open

DOWNLOAD = "hf download Wan-AI/Wan2.1-T2V-1.3B"
TINY = T5Config(vocab=64, dim=32, dim_attn=32, dim_ffn=48, num_heads=4, num_layers=2)
WORDS = ["▁a", "▁cat", "▁dog", "▁runs", "▁on", "▁the", "▁red", "▁grass", "▁in", "▁snow", "▁,",
         ",", ".", "'", '"']
LONG = "a red cat runs on the grass , the dog runs in the snow . " * 3


def public_layout(c: T5Config) -> dict[str, tuple[int, ...]]:
    """Names and shapes of Wan2.1's ``T5Encoder`` state dict (wan/modules/t5.py, shared_pos=False),
    written out by hand."""
    keys = {"token_embedding.weight": (c.vocab, c.dim), "norm.weight": (c.dim,)}
    for i in range(c.num_layers):
        p = f"blocks.{i}."
        keys |= {p + "norm1.weight": (c.dim,), p + "attn.q.weight": (c.dim_attn, c.dim),
                 p + "attn.k.weight": (c.dim_attn, c.dim), p + "attn.v.weight": (c.dim_attn, c.dim),
                 p + "attn.o.weight": (c.dim, c.dim_attn), p + "norm2.weight": (c.dim,),
                 p + "ffn.gate.0.weight": (c.dim_ffn, c.dim),
                 p + "ffn.fc1.weight": (c.dim_ffn, c.dim),
                 p + "ffn.fc2.weight": (c.dim, c.dim_ffn),
                 p + "pos_embedding.embedding.weight": (c.num_buckets, c.num_heads)}
    return keys


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A tiny umT5-like folder: Unigram tokenizer.json (pad 0, EOS 1, unk 2, Metaspace as T5) and
    the json files the public google/umt5-xxl folder has."""
    pytest.importorskip("tokenizers", reason="the `wan` extra")
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, processors

    folder = tmp_path_factory.mktemp("umt5") / "google" / "umt5-xxl"
    folder.mkdir(parents=True)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [(w, -2.0) for w in WORDS] + [(ch, -5.0) for ch in "abcdefghijklmnopqrstuvwxyz"]
    backend = Backend(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.add_special_tokens(["<pad>", "</s>", "<unk>"])
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    backend.save(str(folder / "tokenizer.json"))
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512}))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny encoder in Wan's file layout (plain state dict, torch.save)."""
    path = tmp_path_factory.mktemp("wan") / te.CHECKPOINT
    torch.save(random_umt5(TINY, seed=1).state_dict(), path)
    return path


def make_encoder(checkpoint, tokenizer_dir, cache, **kwargs):
    kwargs = {"device": "cpu", "dtype": torch.float32} | kwargs
    return TextEncoder(checkpoint, tokenizer_dir, TINY, cache_dir=cache, **kwargs)


# -- layout and loading ---------------------------------------------------------------------------
def test_state_dict_is_exactly_the_public_layout():
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in UMT5Encoder(TINY).state_dict().items()}
        full = UMT5Encoder(T5Config())
    assert ours == public_layout(TINY)
    # the default sizes in bf16 fill the public models_t5_umt5-xxl-enc-bf16.pth (11,361,920,418
    # bytes) up to its zip and pickle overhead
    size = sum(p.numel() * 2 for p in full.parameters())
    assert 0 < 11_361_920_418 - size < 200_000


@pytest.mark.parametrize("zip_format", [True, False])
def test_load_is_strict_and_exact(tmp_path, zip_format):
    state = {k: torch.randn(s) for k, s in public_layout(TINY).items()}
    path = tmp_path / "enc.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    model = load_umt5(path, TINY)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def _bad(state, case):
    state = dict(state)
    if case == "missing":
        del state["blocks.1.ffn.gate.0.weight"]
        return state, "blocks.1.ffn.gate.0.weight"
    if case == "shape":
        state["blocks.0.pos_embedding.embedding.weight"] = torch.zeros(16, TINY.num_heads)
        return state, "blocks.0.pos_embedding.embedding.weight [16, 4]"
    state["blocks.0.attn.q.bias"] = torch.zeros(TINY.dim_attn)
    return state, "unexpected blocks.0.attn.q.bias"


@pytest.mark.parametrize("case", ["missing", "shape", "unexpected"])
def test_mismatch_gives_one_clear_error(tmp_path, case):
    state, needle = _bad({k: torch.zeros(s) for k, s in public_layout(TINY).items()}, case)
    path = tmp_path / "enc.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_umt5(path, TINY)
    assert needle in str(err.value) and str(path) in str(err.value) and DOWNLOAD in str(err.value)


def test_missing_files_name_the_file_and_the_download(tmp_path, checkpoint, tokenizer_dir):
    for call, name in [(lambda: load_umt5(tmp_path / "none.pth", TINY), "none.pth"),
                       (lambda: TextEncoder.from_base_dir(tmp_path), te.CHECKPOINT),
                       (lambda: Tokenizer(tmp_path / "google/umt5-xxl"), "tokenizer.json"),
                       (lambda: TextEncoder(checkpoint, tmp_path, TINY), "tokenizer.json")]:
        with pytest.raises(CheckpointError, match="not found") as err:
            call()
        assert name in str(err.value) and DOWNLOAD in str(err.value)
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="got Tensor"):
        load_umt5(tmp_path / "tensor.pth", TINY)


def test_bad_config_and_inputs_are_refused():
    with pytest.raises(ValueError, match="dim_attn 32 .not a multiple of num_heads 5"):
        T5Config(dim_attn=32, num_heads=5)
    with pytest.raises(ValueError, match="bad dim 0 .must be > 0., num_buckets 30"):
        T5Config(dim=0, num_buckets=30)
    model = random_umt5(TINY)
    with pytest.raises(ValueError, match=r"\[2, 5\] and \[2, 4\]"):
        model(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4))


# -- tokenizer and cleaning -----------------------------------------------------------------------
def test_tokenizer_pads_truncates_and_ends_with_eos(tokenizer_dir):
    ids, mask = Tokenizer(tokenizer_dir)(["a cat", "  the   red\n dog  "])
    assert ids.shape == mask.shape == (2, 512) and ids.dtype == torch.long
    assert ids[0, :3].tolist() == [4, 5, 1] and ids[1, :4].tolist() == [9, 10, 6, 1]
    assert mask.sum(1).tolist() == [3, 4] and ids[mask == 0].eq(0).all()
    short = Tokenizer(tokenizer_dir, text_len=8)
    ids, mask = short([LONG])
    assert mask.tolist() == [[1] * 8] and ids[0, -1] == 1  # 7 tokens then EOS
    with pytest.raises(ValueError, match="list of strings"):
        short("a cat")


def test_clean_prompt():
    assert clean_prompt("  A\tcat\n\n runs\u3000fast  ") == "A cat runs fast"
    assert clean_prompt("\u201cHi\u201d, it\u2019s &amp;amp; \ufb01ne") == "\"Hi\", it's & fine"
    assert clean_prompt("静态，细节！\x0b\ufeff") == "静态,细节!"
    assert clean_prompt("cafe\u0301 \x1b[31mred\x1b[0m") == "caf\u00e9 red"


# -- the encoder ----------------------------------------------------------------------------------
def test_relative_buckets_match_t5():
    # hand-computed, T5 bidirectional with 32 buckets and max distance 128: 16 per direction,
    # distances 0..7 exact, then 8 + floor(log(d / 8) / log(16) * 8) up to 15; keys after the
    # query (key - query > 0) add 16
    expected = {0: 0, -1: 1, 1: 17, -7: 7, 7: 23, -12: 9, 12: 25, -20: 10, 45: 28, -100: 15,
                100: 31, -127: 15, 300: 31, -500: 15}
    buckets = relative_buckets(600)
    for rel, bucket in expected.items():
        query = 0 if rel >= 0 else -rel
        assert buckets[query, query + rel] == bucket, rel
    assert buckets.shape == (600, 600) and buckets.min() == 0 and buckets.max() == 31


def test_mask_hides_padding():
    model = random_umt5(TINY, seed=3)
    ids = torch.randint(3, TINY.vocab, (1, 512), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 512, dtype=torch.long)
    mask[:, :9] = 1
    alone = model(ids[:, :9], mask[:, :9])[0]
    padded = model(ids, mask)[0, :9]
    assert torch.allclose(alone, padded, atol=1e-6)
    assert not torch.allclose(alone, model(ids)[0, :9], atol=1e-3)  # without the mask it shows


def test_encoded_prompt_is_the_same_alone_and_in_a_batch(tmp_path, checkpoint, tokenizer_dir):
    alone = make_encoder(checkpoint, tokenizer_dir, tmp_path / "a").encode(["a red cat"])[0]
    batch = make_encoder(checkpoint, tokenizer_dir, tmp_path / "b").encode(["a red cat", LONG])
    assert alone.shape == (4, TINY.dim) and alone.dtype == torch.float32  # 3 words + EOS
    assert torch.allclose(alone, batch[0], atol=1e-6)
    from tokenizers import Tokenizer as Backend

    plain = Backend.from_file(str(tokenizer_dir / "tokenizer.json"))
    words = len(plain.encode(clean_prompt(LONG), add_special_tokens=False).ids)
    assert batch[1].shape == (words + 1, TINY.dim)


def test_cache_skips_the_encoder(tmp_path, checkpoint, tokenizer_dir, monkeypatch):
    cache = tmp_path / "cache"
    first = make_encoder(checkpoint, tokenizer_dir, cache)
    out = first.encode(["a cat runs", "the dog", "a cat runs"])
    assert first._encoder is not None and torch.equal(out[0], out[2])
    files = sorted(cache.iterdir())
    assert len(files) == 2 and all(f.suffix == ".safetensors" for f in files)  # no temp left
    with safe_open(first.cache_path("the dog"), "pt") as f:
        assert list(f.keys()) == ["prompt_embeds"]
    meta = read_metadata(first.cache_path("the dog"))  # written by files.write_tensors
    assert meta["prompt"] == "the dog" and meta["encoder"] == first.identity

    def refuse(*args, **kwargs):
        raise AssertionError("a cached prompt must not build the tokenizer or the encoder")

    monkeypatch.setattr(te, "load_umt5", refuse)
    monkeypatch.setattr(te, "Tokenizer", refuse)
    again = make_encoder(checkpoint, tokenizer_dir, cache)
    cached = again.encode(["the dog", "a cat runs"])
    assert again._encoder is None and again._tokenizer is None
    assert torch.equal(cached[0], out[1]) and torch.equal(cached[1], out[0])


def test_cache_key_follows_the_encoder(tmp_path, checkpoint, tokenizer_dir, monkeypatch):
    other = tmp_path / "other.pth"
    torch.save(random_umt5(TINY, seed=2).state_dict(), other)
    base = make_encoder(checkpoint, tokenizer_dir, tmp_path)
    assert base.cache_path("a cat") == make_encoder(checkpoint, tokenizer_dir,
                                                   tmp_path).cache_path("a cat")
    assert base.cache_path("a cat") != base.cache_path("a dog")
    assert base.cache_path("a cat") != make_encoder(other, tokenizer_dir,
                                                   tmp_path).cache_path("a cat")
    bf16 = make_encoder(checkpoint, tokenizer_dir, tmp_path, dtype=torch.bfloat16)
    assert bf16.cache_path("a cat") != base.cache_path("a cat")
    out = bf16.encode(["a cat"])[0]
    assert out.dtype == torch.float32 and torch.equal(out, out.bfloat16().float())
    bf16.free()
    assert bf16._encoder is None
    monkeypatch.setenv(te.CACHE_ENV, str(tmp_path / "root"))
    assert TextEncoder(checkpoint, tokenizer_dir, TINY).cache_dir == tmp_path / "root" / "prompts"


def _cache_writer(checkpoint, tokenizer_dir, cache, expected, target, writer, barrier):
    """One of several processes on one cache: all encode the same prompts at once (all miss,
    all write), then rewrite one file over and over with this writer's own values."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    want = load_file(expected)
    barrier.wait()
    out = make_encoder(checkpoint, tokenizer_dir, cache).encode(list(want))
    if not all(torch.equal(o, want[p]) for o, p in zip(out, want)):
        sys.exit(3)
    for _ in range(150):
        write_tensors(Path(target), {"prompt_embeds": torch.full((64, 32), float(writer))},
                      {"writer": writer})


def test_concurrent_writers_share_the_prompt_cache(tmp_path, checkpoint, tokenizer_dir):
    """Ranks of a suite encode through one on-disk cache: processes that miss the same prompts
    at once all get the right embeddings, their temporary files never collide (a shared
    temporary name fails here), and every read is a whole file from one writer."""
    import multiprocessing

    from safetensors.torch import load_file, save_file

    prompts = ["a cat runs", "the dog", "a red cat on the grass", "snow"]
    reference = make_encoder(checkpoint, tokenizer_dir, tmp_path / "alone").encode(prompts)
    expected = tmp_path / "expected.safetensors"
    save_file(dict(zip(prompts, reference)), expected)
    cache, target = tmp_path / "cache", tmp_path / "cache" / "shared.safetensors"
    target.parent.mkdir()
    write_tensors(target, {"prompt_embeds": torch.full((64, 32), -1.0)}, {"writer": -1})
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_cache_writer, args=(checkpoint, tokenizer_dir, cache, expected,
                                                     target, w, barrier)) for w in range(3)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):
        x = load_file(target)["prompt_embeds"]  # complete, from one writer
        assert x.shape == (64, 32) and bool((x == x[0, 0]).all())
        reads += 1
        time.sleep(0.002)  # leave the two CI cores to the writers
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert reads > 0
    assert sorted(f.name for f in cache.iterdir()) == sorted(
        [target.name] + [make_encoder(checkpoint, tokenizer_dir, cache).cache_path(p).name
                         for p in prompts])  # no temporary file left


# -- against the reference libraries, when installed ----------------------------------------------
def test_matches_transformers_umt5(tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    c = TINY
    ours = random_umt5(c, seed=4)
    hf_config = transformers.UMT5Config(
        vocab_size=c.vocab, d_model=c.dim, d_kv=c.dim_attn // c.num_heads, d_ff=c.dim_ffn,
        num_layers=c.num_layers, num_heads=c.num_heads,
        relative_attention_num_buckets=c.num_buckets,
        relative_attention_max_distance=c.max_distance, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, layer_norm_epsilon=c.eps)
    hf = transformers.UMT5EncoderModel(hf_config).eval()
    names = {"norm1": "layer.0.layer_norm", "attn.q": "layer.0.SelfAttention.q",
             "attn.k": "layer.0.SelfAttention.k", "attn.v": "layer.0.SelfAttention.v",
             "attn.o": "layer.0.SelfAttention.o",
             "pos_embedding.embedding": "layer.0.SelfAttention.relative_attention_bias",
             "norm2": "layer.1.layer_norm", "ffn.gate.0": "layer.1.DenseReluDense.wi_0",
             "ffn.fc1": "layer.1.DenseReluDense.wi_1", "ffn.fc2": "layer.1.DenseReluDense.wo"}
    state = ours.state_dict()
    mapped = {"shared.weight": state["token_embedding.weight"],
              "encoder.embed_tokens.weight": state["token_embedding.weight"],
              "encoder.final_layer_norm.weight": state["norm.weight"]}
    for i in range(c.num_layers):
        for ours_name, hf_name in names.items():
            mapped[f"encoder.block.{i}.{hf_name}.weight"] = state[f"blocks.{i}.{ours_name}.weight"]
    assert set(mapped) == set(hf.state_dict())
    hf.load_state_dict(mapped, strict=True)

    ids = torch.randint(3, c.vocab, (3, 200), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(3, 200, dtype=torch.long)
    for row, n in enumerate([200, 150, 7]):  # beyond max_distance, and mostly padding
        mask[row, :n] = 1
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    got = ours(ids, mask)
    diff = (got - want)[mask.bool()].abs().max().item()
    print(f"max |ours - transformers| on real tokens, fp32: {diff:.2e}")
    assert diff < 1e-5

    prompts = ["a cat", " the  red dog runs", LONG * 12, "x, 'y' \"z\" 中"]
    ref = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    want = ref([clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
               max_length=512, return_tensors="pt", add_special_tokens=True)
    ids, mask = Tokenizer(tokenizer_dir)(prompts)
    assert torch.equal(ids, want.input_ids) and torch.equal(mask, want.attention_mask)


WAN_NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
                "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"
                "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")


def test_cleaning_matches_wan_with_ftfy():
    ftfy = pytest.importorskip("ftfy")
    regex = pytest.importorskip("regex")

    def wan(text):  # wan/modules/tokenizers.py: whitespace_clean(basic_clean(text))
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return regex.sub(r"\s+", " ", text).strip()

    corpus = [WAN_NEGATIVE, "A cat runs on the grass.", "  A  cat\t\nruns \r\n ", "", "   ",
              "\u201cQuoted\u201d and \u2018single\u2019 \u2013 it\u2019s fine",
              "ＬＯＵＤ　ＮＯＩＳＥＳ！（１２３）", "\ufb02u\ufb03e\ufb06 \u0149 \u01c4 \ufb05",
              "&ldquo;hi&rdquo; &amp;amp; &lt;3 &eacute;", "cafe\u0301 ｶﾞｷﾞ ｳﾀｰﾝ",
              "\x93smart\x94 \x85 end \x96 dash", "\x1b[31mred\x1b[0m text",
              "tab\x0bvt\x0cff\x1cfs\u200bzw\ufeffbom\u2028ls\u2029ps\xa0nb",
              "emoji 🐱🚀 and 中文，标点。", "x\u02bcy \u201fz\u201b"]
    for text in corpus:
        assert clean_prompt(text) == wan(text), repr(text)
