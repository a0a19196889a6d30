"""Fidelity of Engine + the Wan backbone against the public LongLive-RAG code (CPU, tiny sizes).

Imports both ``CausalWanModel`` classes (``wan/modules/causal_model_latentmem.py``, the retrieval
model, and ``wan/modules/causal_model.py``, the native model of the ``*_native.yaml`` configs,
LongLive's own) and ``FlowMatchScheduler`` from a checkout of
https://github.com/qixinhu11/LongLive-RAG, loads the same random weights into the public model and
the backbone and generates the same video twice: once with a loop that follows the public
``pipeline/causal_inference.py`` (KV cache rolling, CPU pool of evicted frames, ``avg_pool``
cosine retrieval of the last frame's descriptor, recache at t = 0), once with ``Engine``.

Retrieval table, per K: the latent-memory model against ``reference`` placement (whether the
retrieved sets agree, the largest latent difference). Native table, per preset and public native
config: the native model (K/V roped at the absolute frame index) against ``positions:
absolute`` and, for contrast, the default ``positions: slots``. Then what the public RoPE does
past its 1024-position table. Runs in float32 on the CPU with SDPA in place of flash attention;
the public code's CPU copies of evicted frames alias its cache on the CPU, so the latent-memory
module is loaded with those two copies made explicit (``.clone()``).

    python benchmarks/wan_fidelity.py --public ../LongLive-RAG            # K = 0, 3, 6
    python benchmarks/wan_fidelity.py --public ../LongLive-RAG --steps 1  # 1-step schedule
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from lrag_adapters.wan.backbone import WanBackbone
from lrag_adapters.wan.presets import PRESETS

from lrag_framework.generation import plan
from lrag_framework.generation.engine import Engine, EngineOptions, stream_generator
from lrag_framework.plugins import load_plugins

# (preset, public native config, window, sink, frames): the settings of that config, run on
# LongLive-RAG's causal_model.py (LongLive's, adopted from Self-Forcing); window None: global
# attention over a cache of ``frames`` frames (local_attn_size -1), which never rolls
NATIVE = [
    ("self_forcing", "LongLive-RAG configs/self_forcing_native.yaml", 12, 1, 45),
    ("causal_forcing", "LongLive-RAG configs/causal_forcing_native.yaml", 12, 1, 45),
    ("longlive", "LongLive-RAG configs/longlive_native.yaml", 12, 1, 45),
    ("longlive", "LongLive configs/longlive_inference.yaml", 12, 3, 45),
    ("self_forcing", "Self-Forcing configs/self_forcing_dmd.yaml", None, 0, 21),
    ("causal_forcing", "Causal-Forcing configs/causal_forcing_dmd_chunkwise.yaml", None, 0, 21),
    ("causvid", "CausVid configs/wan_causal_dmd.yaml", None, 0, 21),
]
SIZES = {"num_layers": 2, "dim": 48, "num_heads": 2, "ffn_dim": 80, "freq_dim": 16, "text_dim": 24,
         "text_len": 10, "latent_channels": 4, "latent_height": 4, "latent_width": 6}


def sdpa(q, k, v, *args, **kwargs):
    """The public attention signature ([B, L, H, D] tensors) on float32 SDPA."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2).float(), k.transpose(1, 2).float(),
                                         v.transpose(1, 2).float())
    return out.transpose(1, 2)


def load_module(name: str, path: Path, replace: tuple[str, str] | None = None,
                attention=sdpa):
    """A public module executed from its file, its attention swapped for ``attention``."""
    source = path.read_text()
    if replace:
        source = source.replace(*replace)
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    sys.modules[name] = module
    exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 (the public module)
    module.attention = attention
    return module


def import_public(root: Path, attention=sdpa, cpu_copies_cloned: bool = True):
    """The latent-memory and native CausalWanModel modules and FlowMatchScheduler from a
    LongLive-RAG checkout, dependencies stubbed, ``attention`` in place of flash attention.
    ``cpu_copies_cloned``: the evicted frames' copies to the CPU become ``.clone()`` (on a CPU
    run they would alias the rolling cache)."""
    def stub(name, **attrs):
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module

    stub("diffusers")
    stub("diffusers.configuration_utils", ConfigMixin=object, register_to_config=lambda f: f)
    stub("diffusers.models")
    stub("diffusers.models.modeling_utils", ModelMixin=torch.nn.Module)
    stub("utils", __path__=[str(root / "utils")])
    stub("utils.memory", gpu=torch.device("cpu"), get_cuda_free_memory_gb=lambda *a: 0,
         DynamicSwapInstaller=None, log_gpu_memory=lambda *a, **k: None)
    stub("utils.debug_option", DEBUG=False)
    stub("wan", __path__=[str(root / "wan")])
    stub("wan.modules", __path__=[str(root / "wan" / "modules")])
    from wan.modules import attention as public_attention
    public_attention.flash_attention = public_attention.attention = attention
    import wan.modules.model  # noqa: F401  (imported by the causal model)
    modules = root / "wan" / "modules"
    latentmem = load_module("wan.modules.causal_model_latentmem",
                            modules / "causal_model_latentmem.py",
                            ('f.to("cpu", non_blocking=True)', "f.clone()")
                            if cpu_copies_cloned else None, attention)
    native = load_module("wan.modules.causal_model", modules / "causal_model.py",
                         attention=attention)
    from utils.scheduler import FlowMatchScheduler

    return latentmem, native, FlowMatchScheduler


def public_model(module, state, window, sink, sizes=SIZES, **memory):
    """The public CausalWanModel at ``sizes`` with ``state`` loaded (window -1: global)."""
    c = sizes["latent_channels"]
    model = module.CausalWanModel(
        model_type="t2v", patch_size=(1, 2, 2), text_len=sizes["text_len"], in_dim=c,
        dim=sizes["dim"], ffn_dim=sizes["ffn_dim"], freq_dim=sizes["freq_dim"],
        text_dim=sizes["text_dim"], out_dim=c, num_heads=sizes["num_heads"],
        num_layers=sizes["num_layers"], local_attn_size=window, sink_size=sink, **memory)
    model.load_state_dict(state, strict=True)
    return model


def public_generate(model, scheduler_cls, params, text, k, cache_frames, recency, frames,
                    sizes=SIZES, device="cpu", dtype=torch.float32):
    """The public pipeline's block loop for one stream, noise drawn as the engine draws it.
    ``params``: the backbone's WanParams (sampler, sink); ``cache_frames``: the KV cache size;
    the model, ``text`` and the cache on ``device`` in ``dtype``."""
    c, h, w, block = sizes["latent_channels"], sizes["latent_height"], sizes["latent_width"], 3
    n, sink = (h // 2) * (w // 2), params.sink
    model.num_frame_per_block = block
    for m in model.modules():  # the public code sizes this for 1560-token frames
        if hasattr(m, "max_attention_size"):
            m.max_attention_size = cache_frames * n
    sched = scheduler_cls(shift=params.timestep_shift, sigma_min=0.0, extra_one_step=True)
    sched.set_timesteps(1000, training=True)
    steps = torch.tensor(params.denoising_steps, dtype=torch.float32)
    if params.warp_denoising_step:
        steps = torch.cat((sched.timesteps, torch.zeros(1)))[1000 - steps.long()]
    memory_kwargs = hasattr(model.blocks[0].self_attn, "memory_size")
    heads, hd = sizes["num_heads"], sizes["dim"] // sizes["num_heads"]
    empty = torch.zeros(1, cache_frames * n, heads, hd, device=device, dtype=dtype)
    cache = [{"k": empty.clone(), "v": empty.clone(),
              "global_end_index": torch.tensor([0]), "local_end_index": torch.tensor([0]),
              "cpu_k_frames": [], "cpu_v_frames": []} for _ in range(sizes["num_layers"])]
    cross = [{"k": None, "v": None, "is_init": False} for _ in range(sizes["num_layers"])]
    gen, shape = stream_generator(0, 0), (block, c, h, w)
    descriptors, out, selected = [], [], []

    def call(x, t, start, memory):
        extra = {"memory_indices": memory} if memory_kwargs else {}
        flow = model(x.permute(0, 2, 1, 3, 4), t=t, context=[text], seq_len=10 ** 9,
                     kv_cache=cache, crossattn_cache=cross, current_start=start * n, **extra)
        return flow.permute(0, 2, 1, 3, 4)

    with torch.no_grad():
        for start in range(0, frames, block):
            x = torch.randn(shape, generator=gen)[None].to(device, dtype)
            noises = [torch.randn(shape, generator=gen).to(device, dtype) for _ in steps]
            memory = None
            eligible = max(len(cache[0]["cpu_k_frames"]) - recency, 0)
            if k and eligible and descriptors:
                pool = torch.stack([descriptors[sink + i] for i in range(eligible)], 1)
                query = descriptors[-1][:, None]
                sims = torch.bmm(pool / (pool.norm(dim=-1, keepdim=True) + 1e-8),
                                 (query / (query.norm(dim=-1, keepdim=True) + 1e-8)).mT)
                memory = sims.squeeze(-1).topk(min(k, eligible), dim=-1).indices
                selected.append((start, sorted((memory + sink).tolist()[0])))
            for i, t in enumerate(steps):
                tt = torch.full((1, block), float(t), device=device)
                flow = call(x, tt, start, memory)
                sigma = sched.sigmas[(sched.timesteps - t).abs().argmin()].double()
                pred = (x.double() - sigma * flow.double()).to(dtype)
                if i + 1 < len(steps):
                    x = sched.add_noise(pred.flatten(0, 1), noises[i],
                                        torch.full((block,), float(steps[i + 1]),
                                                   device=device))[None]
            out.append(pred)
            descriptors += [pred[:, f].mean(dim=(-2, -1)) for f in range(block)]
            call(pred, torch.zeros(1, block, device=device), start, memory)
    return torch.cat(out, 1), selected


def first_difference(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, str]:
    """Largest latent difference and the first frame that differs by more than 1e-4."""
    diff = (ours - ref).abs().amax(dim=(0, 2, 3, 4))
    bad = (diff > 1e-4).nonzero()
    return float(diff.max()), f"frame {int(bad[0])}" if len(bad) else "-"


def backbone(preset: str, window: int, sink: int, steps: int | None) -> WanBackbone:
    params = PRESETS[preset](random_init=True, window=window, sink=sink, **SIZES)
    if steps:
        params = params.model_copy(update={"denoising_steps": params.denoising_steps[:steps]})
    return WanBackbone(params).to("cpu", torch.float32)


def retrieval_table(latentmem, scheduler_cls, text, ks, frames, steps) -> None:
    window, sink, recency = 12, 1, 5
    bb = backbone("self_forcing", window, sink, steps)
    registry = load_plugins()
    print("| K | retrieved sets equal | max abs latent difference | first differing frame |")
    print("|---|---|---|---|")
    for k in ks:
        model = public_model(latentmem, bb.model.state_dict(), window, sink, memory_size=k)
        ref, ref_sel = public_generate(model, scheduler_cls, bb.params, text, k, window,
                                       recency, frames)
        g = plan.Geometry(block=3, window=window, sink=sink, k=k, recency=recency,
                          placement="reference")
        engine = Engine(bb, registry.build("embedder", "avg_pool", {}),
                        registry.build("retriever", "exact", {}), EngineOptions(g))
        res = engine.generate(bb.encode_conditioning([text], frames), [stream_generator(0, 0)],
                              frames)
        ours_sel = [(e["block_start"], sorted(e["ids"][0])) for e in res.log if e["ids"][0]]
        diff, first = first_difference(res.latents, ref)
        print(f"| {k} | {ours_sel == ref_sel} | {diff:.2e} | {first} |")


def native_table(native, scheduler_cls, text, steps) -> None:
    print("| preset | public native config | window | sink | frames | positions: absolute, max abs "
          "latent difference | first differing frame | positions: slots (default) | first "
          "differing frame |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, source, window, sink, frames in NATIVE:
        bb = backbone(preset, window or frames, sink, steps)
        model = public_model(native, bb.model.state_dict(), window or -1, sink)
        ref, _ = public_generate(model, scheduler_cls, bb.params, text, 0, window or frames, 0,
                                 frames)
        row = []
        for positions in ("absolute", "slots"):
            g = plan.Geometry(block=3, window=window or frames, sink=sink, positions=positions)
            engine = Engine(bb, None, None, EngineOptions(g))
            res = engine.generate(bb.encode_conditioning([text], frames),
                                  [stream_generator(0, 0)], frames)
            row.append(first_difference(res.latents, ref))
        (absolute, first), (slots, first_slots) = row
        shown = window if window else f"all ({frames})"
        print(f"| {preset} | {source} | {shown} | {sink} | {frames} | {absolute:.2e} | {first} "
              f"| {slots:.2e} | {first_slots} |")


def rope_table_limit(native) -> None:
    """What the public causal RoPE does at the end of its table (Wan2.1-1.3B head dim 128)."""
    from wan.modules.model import rope_params

    d = 128
    freqs = torch.cat([rope_params(1024, d - 4 * (d // 6)), rope_params(1024, 2 * (d // 6)),
                       rope_params(1024, 2 * (d // 6))], dim=1)
    x, grid = torch.zeros(1, 3 * 2 * 2, 12, d), torch.tensor([[3, 2, 2]])
    for start in (1020, 1021, 1022, 1023):
        try:
            native.causal_rope_apply(x, grid, freqs, start_frame=start)
            result = "ok"
        except RuntimeError as err:
            result = f"RuntimeError: {str(err).splitlines()[0]}"
        print(f"public causal_rope_apply, 3-frame block at frames {start}..{start + 2}: {result}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--public", type=Path, required=True, help="LongLive-RAG checkout")
    parser.add_argument("--k", type=int, nargs="+", default=[0, 3, 6])
    parser.add_argument("--frames", type=int, default=45)
    parser.add_argument("--steps", type=int, default=None,
                        help="use the first N denoising steps of each preset (default: all)")
    args = parser.parse_args()
    latentmem, native, scheduler_cls = import_public(args.public.resolve())
    text = torch.randn(7, SIZES["text_dim"], generator=torch.Generator().manual_seed(1))
    retrieval_table(latentmem, scheduler_cls, text, args.k, args.frames, args.steps)
    print()
    native_table(native, scheduler_cls, text, args.steps)
    print()
    rope_table_limit(native)


if __name__ == "__main__":
    main()
