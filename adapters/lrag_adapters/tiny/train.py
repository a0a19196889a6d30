"""Train the tiny backbone on the procedural world with flow matching.

Two kinds of steps, mixed by ``planned_prob``. Teacher forcing: each training clip is
``[sink frame | window - 1 consecutive frames]`` (the sink comes from the start of its video, possibly far earlier, as at inference once the cache rolls). Clean and noisy
copies of the clip run as one sequence under a block-causal mask: clean frames attend to clean
frames of their own and earlier blocks (the recache pass), noisy frames attend to clean frames of
earlier blocks and to their own noisy block (a denoising pass). Every block draws its own noise
level. Planned context (``planned.py``): one block per video in the context the planner gives at
inference (sink + retrieved + local frames at their planned positions), retrieved frames chosen
by ground-truth overlap or at random, the last local block optionally the model's own rollout.
Run in pieces: training stops after ``time_limit_minutes`` with a checkpoint and resumes
from it when started again.

    python -m lrag_adapters.tiny.train CONFIG.yaml [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field

from lrag_framework.devices import resolve_device
from lrag_framework.generation.plan import Geometry

from .model import TinyConfig, TinyDiT
from .params import TinyParams
from .planned import planned_loss
from .sampling import sigmas


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: TinyParams = TinyParams(weights=None)
    init_weights: str | None = Field(None, description="start from these TinyDiT weights "
                                     "(builtin: the shipped ones); null: random init")
    out_dir: str = "runs/train-tiny"
    videos: int = Field(512, ge=2)
    video_frames: int = Field(192, ge=16)
    val_videos: int = Field(16, ge=1)
    batch_size: int = Field(64, ge=1)
    steps: int = Field(20000, ge=1)
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 500
    grad_clip: float = 1.0
    ema: float = 0.999
    context_noise: float = Field(0.1, ge=0, description="max noise added to clean context frames")
    sink_gap_prob: float = Field(0.5, ge=0, le=1)
    revisit_fraction: float = Field(0.0, ge=0, le=1, description="share of training videos on "
                                    "revisit paths (the rest: random walks)")
    planned_prob: float = Field(0.0, ge=0, le=1, description="share of steps on planned context")
    retrieved: int = Field(3, ge=0, description="retrieved frames of a planned step (fill)")
    recency: int = Field(5, ge=0)
    retrieved_prob: float = Field(0.8, ge=0, le=1, description="share of planned steps with "
                                  "retrieved frames (the rest: native context)")
    truth_prob: float = Field(0.75, ge=0, le=1, description="share of samples whose retrieved "
                              "frames are the true best overlaps (the rest: random)")
    rollout_prob: float = Field(0.5, ge=0, le=1, description="share of planned steps whose last "
                                "local blocks are the model's own rollout")
    rollout_blocks: int = Field(1, ge=1, description="local blocks rolled out in such a step "
                                "(the last ones, oldest first)")
    time_limit_minutes: float = 10.0
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0
    device: str = "auto"


def render_corpus(cfg: TrainConfig, first_seed: int, n: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Videos of the procedural world (the first ``revisit_fraction`` on revisit paths): uint8
    frames [n, T, 3, H, W], actions [n, T, A], camera positions [n, T, 2] and the panorama
    width."""
    from lrag_adapters.world import make_clip

    frames, actions, xy, width = [], [], [], 0
    n_revisit = round(cfg.revisit_fraction * n)
    for i, seed in enumerate(range(first_seed, first_seed + n)):
        clip, act, truths = make_clip(seed, cfg.video_frames,
                                      "revisit" if i < n_revisit else "walk")
        frames.append(torch.from_numpy(((clip + 1) * 127.5).round().astype(np.uint8)))
        actions.append(torch.from_numpy(act.astype(np.float32)))
        xy.append(torch.tensor([(t.x, t.y) for t in truths], dtype=torch.long))
        width = truths[0].width
    return torch.stack(frames), torch.stack(actions), torch.stack(xy), width


def teacher_forcing_mask(frames: int, block: int, device) -> torch.Tensor:
    """Frame-level mask [2T, 2T] over [clean | noisy] copies of a clip."""
    blk = torch.arange(frames, device=device) // block
    same_or_before = blk[:, None] >= blk[None, :]
    before = blk[:, None] > blk[None, :]
    same = blk[:, None] == blk[None, :]
    top = torch.cat((same_or_before, torch.zeros_like(same)), dim=1)  # clean queries
    bottom = torch.cat((before, same), dim=1)  # noisy queries
    return torch.cat((top, bottom), dim=0)


def sample_clips(frames, actions, batch, window, sink_gap_prob, gen):
    """Clips [B, window, 3, H, W] in [-1, 1] and their actions, sink first."""
    n, t = frames.shape[:2]
    vid = torch.randint(n, (batch,), generator=gen)
    start = torch.randint(1, t - window + 2, (batch,), generator=gen)
    gap = torch.rand(batch, generator=gen) < sink_gap_prob
    start = torch.where(gap, start, torch.ones_like(start))
    idx = torch.cat((torch.zeros(batch, 1, dtype=torch.long),
                     start[:, None] + torch.arange(window - 1)), dim=1)  # [B, window]
    clip = frames[vid[:, None].to(frames.device), idx.to(frames.device)]
    act = actions[vid[:, None].to(actions.device), idx.to(actions.device)]
    return clip.float() / 127.5 - 1, act


def flow_loss(model: TinyDiT, clip, actions, p: TinyParams, context_noise: float, gen=None):
    """Teacher-forcing flow-matching loss of a batch of clips [B, T, C, H, W]."""
    b, t = clip.shape[:2]
    dev = clip.device
    blocks = math.ceil(t / p.frames_per_block)
    steps = sigmas(p).to(dev)
    discrete = steps[torch.randint(len(steps), (b, blocks), device=dev)]
    sigma = torch.where(torch.rand(b, blocks, device=dev) < 0.5, discrete,
                        torch.rand(b, blocks, device=dev))
    sigma = sigma.repeat_interleave(p.frames_per_block, dim=1)[:, :t]  # [B, T]
    noise = torch.randn_like(clip)
    s = sigma[..., None, None, None]
    noisy = (1 - s) * clip + s * noise
    ctx = clip + torch.rand(b, 1, 1, 1, 1, device=dev) * context_noise * torch.randn_like(clip)
    seq = torch.cat((ctx, noisy), dim=1)
    tt = torch.cat((torch.zeros_like(sigma), sigma * 1000), dim=1)
    pos = torch.arange(t, device=dev).expand(b, -1)
    mask = teacher_forcing_mask(t, p.frames_per_block, dev)
    pred = model.forward_sequence(seq, tt, torch.cat((actions, actions), 1),
                                  torch.cat((pos, pos), 1), mask)[:, t:]
    return F.mse_loss(pred.float(), (noise - clip).float())


def save_checkpoint(path: Path, model, ema, opt, step: int, cfg: TrainConfig) -> None:
    """Write a checkpoint folder atomically: weights, EMA weights, optimizer state, step."""
    from lrag_framework.files import atomic_dir, save_optimizer, write_tensors

    with atomic_dir(path) as tmp:
        write_tensors(tmp / "model.safetensors", model.state_dict())
        write_tensors(tmp / "ema.safetensors", ema.state_dict())
        save_optimizer(tmp, opt)
        (tmp / "state.json").write_text(json.dumps({"step": step,
                                                    "config": cfg.model_dump(mode="json")}))


def export_weights(ckpt: Path, dest: Path) -> None:
    """Ship the EMA weights as fp16 safetensors with the model params beside them."""
    from lrag_framework.files import read_tensors, write_tensors

    state = read_tensors(ckpt / "ema.safetensors")
    meta = json.loads((ckpt / "state.json").read_text())
    params = {k: v for k, v in meta["config"]["model"].items() if k != "weights"}
    write_tensors(dest, {k: v.half().contiguous() for k, v in state.items()},
                  metadata={"params": params, "step": meta["step"]})


def plot_log(log_path: Path, out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lrag_framework.files import write_figure

    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for key, label in (("loss", "train, teacher forcing"), ("planned_loss", "train, planned "
                       "context"), ("val_loss", "validation, teacher forcing")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            ax.plot(*zip(*points), "o-" if key == "val_loss" else "-", lw=0.8, label=label)
    ax.set(xlabel="step", ylabel="flow-matching MSE", yscale="log", title="tiny backbone")
    ax.legend()
    fig.tight_layout()
    write_figure(fig, out)


def train(cfg: TrainConfig, on_event: Callable[[str], None] | None = None) -> dict:
    """Train (resuming from ``out_dir/checkpoint``), export the EMA weights and return
    ``{step, steps, weights, finished}``. ``on_event`` receives progress messages; the global RNG
    is left as it was."""
    dev = resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        return _train(cfg, dev, on_event or (lambda message: None))


def _load_checkpoint(ckpt: Path, model, ema, opt, dev) -> int:
    from lrag_framework.files import load_optimizer, load_state_strict, read_tensors

    load_state_strict(model, read_tensors(ckpt / "model.safetensors", dev), str(ckpt))
    load_state_strict(ema, read_tensors(ckpt / "ema.safetensors", dev), str(ckpt))
    load_optimizer(ckpt, opt, dev)
    return json.loads((ckpt / "state.json").read_text())["step"]


def _train(cfg: TrainConfig, dev: torch.device, on_event: Callable[[str], None]) -> dict:
    from tqdm import tqdm

    from .backbone import load_weights

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = cfg.model
    model = TinyDiT(TinyConfig.from_params(p))
    if cfg.init_weights:
        load_weights(model, cfg.init_weights)
    model.to(dev)
    ema = TinyDiT(model.cfg).to(dev).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, ckpt = 0, out / "checkpoint"
    from lrag_framework.files import is_checkpoint

    if is_checkpoint(ckpt, "state.json", "model.safetensors", "ema.safetensors"):
        step = _load_checkpoint(ckpt, model, ema, opt, dev)
        on_event(f"resumed from {ckpt} at step {step}")
    t0 = time.time()
    frames, actions, xy, width = render_corpus(cfg, cfg.seed * 100_000, cfg.videos)
    val_frames, val_actions, _, _ = render_corpus(cfg, cfg.seed * 100_000 + cfg.videos,
                                                  cfg.val_videos)
    frames, actions, xy = frames.to(dev), actions.to(dev), xy.to(dev)
    val_frames, val_actions = val_frames.to(dev), val_actions.to(dev)
    on_event(f"rendered {cfg.videos}+{cfg.val_videos} videos in {time.time() - t0:.1f}s")
    g = Geometry(p.frames_per_block, p.window, p.sink, cfg.retrieved, cfg.recency, "fill")
    gen = torch.Generator().manual_seed(cfg.seed + step)
    dgen = torch.Generator(device=dev).manual_seed(cfg.seed + step + 1)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
    log = (out / "log.jsonl").open("a")
    start, bar = time.time(), tqdm(initial=step, total=cfg.steps, desc="train tiny")
    while step < cfg.steps:
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (
            1 + math.cos(math.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        draws = torch.rand(3, generator=gen).tolist()
        planned = draws[0] < cfg.planned_prob
        with amp:
            if planned:
                vid = torch.randint(len(frames), (cfg.batch_size,), generator=gen).to(dev)
                n_ret = cfg.retrieved if draws[1] < cfg.retrieved_prob else 0
                loss = planned_loss(model, frames[vid], actions[vid], xy[vid], g, p, n_ret,
                                    cfg.rollout_blocks * (draws[2] < cfg.rollout_prob),
                                    cfg.truth_prob,
                                    cfg.context_noise, width, dgen)
            else:
                clip, act = sample_clips(frames, actions, cfg.batch_size, p.window,
                                         cfg.sink_gap_prob, gen)
                loss = flow_loss(model, clip, act, p, cfg.context_noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            for e, m in zip(ema.parameters(), model.parameters()):
                e.lerp_(m, 1 - cfg.ema)
        step += 1
        bar.update()
        if step % cfg.log_every == 0:
            row = {"step": step, "planned_loss" if planned else "loss": float(loss.detach()),
                   "lr": lr, "seconds": time.time() - start}
            if step % (cfg.log_every * 10) == 0:
                row["val_loss"] = validate(ema, val_frames, val_actions, cfg)
            log.write(json.dumps(row) + "\n")
            log.flush()
        done = step >= cfg.steps or time.time() - start > cfg.time_limit_minutes * 60
        if step % cfg.checkpoint_every == 0 or done:
            save_checkpoint(ckpt, model, ema, opt, step, cfg)
        if done:
            break
    bar.close()
    log.close()
    plot_log(out / "log.jsonl", out / "loss.png")
    export_weights(ckpt, out / "tiny_world.safetensors")
    return {"step": step, "steps": cfg.steps, "weights": str(out / "tiny_world.safetensors"),
            "finished": step >= cfg.steps}


@torch.no_grad()
def validate(model: TinyDiT, frames, actions, cfg: TrainConfig) -> float:
    """Validation loss on fixed clips and fixed noise (the global RNG is left untouched)."""
    gen = torch.Generator().manual_seed(1234)
    clip, act = sample_clips(frames, actions, min(64, cfg.batch_size), cfg.model.window, 0.5, gen)
    devices = [frames.device] if frames.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(1234)
        return float(flow_loss(model, clip, act, cfg.model, 0.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    from lrag_framework.config import apply_overrides

    data = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    result = train(TrainConfig.model_validate(apply_overrides(data, args.set)),
                   lambda message: print(message, file=sys.stderr))
    print(f"step {result['step']}/{result['steps']}; weights: {result['weights']}"
          + ("" if result["finished"] else " (time limit: run again to resume)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
