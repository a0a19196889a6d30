"""Fidelity of Engine + the Wan backbone against the public LongLive-RAG code (CPU, tiny sizes).

Imports ``CausalWanModel`` (``wan/modules/causal_model_latentmem.py``) and ``FlowMatchScheduler``
from a checkout of https://github.com/qixinhu11/LongLive-RAG, loads the same random weights into
both models and generates the same video twice: once with a loop that follows the public
``pipeline/causal_inference.py`` (KV cache rolling, CPU pool of evicted frames, ``avg_pool``
cosine retrieval of the last frame's descriptor, recache at t = 0), once with ``Engine`` in
``reference`` placement. Prints, per K, whether the retrieved sets agree and the largest latent
difference. Runs in float32 on the CPU with SDPA in place of flash attention; the public code's
CPU copies of evicted frames alias its cache on the CPU, so the module is loaded with those two
copies made explicit (``.clone()``).

    python benchmarks/wan_fidelity.py --public ../LongLive-RAG            # K = 0, 3, 6
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
from lrag_adapters.wan.presets import SelfForcingParams

from lrag_framework import plan
from lrag_framework.generation.engine import Engine, EngineOptions, stream_generator
from lrag_framework.plugins import load_plugins

SIZES = {"num_layers": 2, "dim": 48, "num_heads": 2, "ffn_dim": 80, "freq_dim": 16, "text_dim": 24,
         "text_len": 10, "latent_channels": 4, "latent_height": 4, "latent_width": 6}


def sdpa(q, k, v, *args, **kwargs):
    """The public attention signature ([B, L, H, D] tensors) on float32 SDPA."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2).float(), k.transpose(1, 2).float(),
                                         v.transpose(1, 2).float())
    return out.transpose(1, 2)


def import_public(root: Path):
    """CausalWanModel and FlowMatchScheduler from a LongLive-RAG checkout, dependencies stubbed."""
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
    from wan.modules import attention
    attention.flash_attention = attention.attention = sdpa
    import wan.modules.model  # noqa: F401  (imported by the causal model)
    path = root / "wan" / "modules" / "causal_model_latentmem.py"
    source = path.read_text().replace('f.to("cpu", non_blocking=True)', "f.clone()")
    spec = importlib.util.spec_from_loader("wan.modules.causal_model_latentmem", loader=None)
    causal = importlib.util.module_from_spec(spec)
    causal.__file__ = str(path)
    sys.modules[spec.name] = causal
    exec(compile(source, str(path), "exec"), causal.__dict__)  # noqa: S102 (the public module)
    causal.attention = sdpa
    from utils.scheduler import FlowMatchScheduler

    return causal.CausalWanModel, FlowMatchScheduler


def public_generate(model_cls, scheduler_cls, state, text, k, window, sink, recency, frames):
    """The public pipeline's block loop for one stream, noise drawn as the engine draws it."""
    c, h, w, block = SIZES["latent_channels"], SIZES["latent_height"], SIZES["latent_width"], 3
    n = (h // 2) * (w // 2)
    model = model_cls(model_type="t2v", patch_size=(1, 2, 2), text_len=SIZES["text_len"],
                      in_dim=c, dim=SIZES["dim"], ffn_dim=SIZES["ffn_dim"],
                      freq_dim=SIZES["freq_dim"], text_dim=SIZES["text_dim"], out_dim=c,
                      num_heads=SIZES["num_heads"], num_layers=SIZES["num_layers"],
                      local_attn_size=window, sink_size=sink, memory_size=k)
    model.load_state_dict(state, strict=True)
    model.num_frame_per_block = block
    for m in model.modules():  # the public code sizes this for 1560-token frames
        if hasattr(m, "max_attention_size"):
            m.max_attention_size = window * n
    sched = scheduler_cls(shift=5.0, sigma_min=0.0, extra_one_step=True)
    sched.set_timesteps(1000, training=True)
    steps = torch.cat((sched.timesteps, torch.zeros(1)))[1000 - torch.tensor([1000, 750, 500, 250])]
    heads, hd = SIZES["num_heads"], SIZES["dim"] // SIZES["num_heads"]
    empty = torch.zeros(1, window * n, heads, hd)
    cache = [{"k": empty.clone(), "v": empty.clone(),
              "global_end_index": torch.tensor([0]), "local_end_index": torch.tensor([0]),
              "cpu_k_frames": [], "cpu_v_frames": []} for _ in range(SIZES["num_layers"])]
    cross = [{"k": None, "v": None, "is_init": False} for _ in range(SIZES["num_layers"])]
    gen, shape = stream_generator(0, 0), (block, c, h, w)
    descriptors, out, selected = [], [], []

    def call(x, t, start, memory):
        flow = model(x.permute(0, 2, 1, 3, 4), t=t, context=[text], seq_len=10 ** 9,
                     kv_cache=cache, crossattn_cache=cross, current_start=start * n,
                     memory_indices=memory)
        return flow.permute(0, 2, 1, 3, 4)

    with torch.no_grad():
        for start in range(0, frames, block):
            x = torch.randn(shape, generator=gen)[None]
            noises = [torch.randn(shape, generator=gen) for _ in steps]
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
                tt = torch.full((1, block), float(t))
                flow = call(x, tt, start, memory)
                sigma = sched.sigmas[(sched.timesteps - t).abs().argmin()].double()
                pred = (x.double() - sigma * flow.double()).float()
                if i + 1 < len(steps):
                    x = sched.add_noise(pred.flatten(0, 1), noises[i],
                                        torch.full((block,), float(steps[i + 1])))[None]
            out.append(pred)
            descriptors += [pred[:, f].mean(dim=(-2, -1)) for f in range(block)]
            call(pred, torch.zeros(1, block), start, memory)
    return torch.cat(out, 1), selected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--public", type=Path, required=True, help="LongLive-RAG checkout")
    parser.add_argument("--k", type=int, nargs="+", default=[0, 3, 6])
    parser.add_argument("--frames", type=int, default=45)
    args = parser.parse_args()
    window, sink, recency = 12, 1, 5
    model_cls, scheduler_cls = import_public(args.public.resolve())
    bb = WanBackbone(SelfForcingParams(random_init=True, window=window, sink=sink, **SIZES))
    bb.to("cpu", torch.float32)
    text = torch.randn(7, SIZES["text_dim"], generator=torch.Generator().manual_seed(1))
    registry = load_plugins()
    print("| K | retrieved sets equal | max abs latent difference | first differing frame |")
    print("|---|---|---|---|")
    for k in args.k:
        ref, ref_sel = public_generate(model_cls, scheduler_cls, bb.model.state_dict(), text, k,
                                       window, sink, recency, args.frames)
        g = plan.Geometry(block=3, window=window, sink=sink, k=k, recency=recency,
                          placement="reference")
        engine = Engine(bb, registry.build("embedder", "avg_pool", {}),
                        registry.build("retriever", "exact", {}), EngineOptions(g))
        res = engine.generate(bb.encode_conditioning([text], args.frames),
                              [stream_generator(0, 0)], args.frames)
        ours_sel = [(e["block_start"], sorted(e["ids"][0])) for e in res.log if e["ids"][0]]
        diff = (res.latents - ref).abs().amax(dim=(0, 2, 3, 4))
        bad = (diff > 1e-4).nonzero()
        first = f"frame {int(bad[0])}" if len(bad) else "-"
        print(f"| {k} | {ours_sel == ref_sel} | {float(diff.max()):.2e} | {first} |")


if __name__ == "__main__":
    main()
