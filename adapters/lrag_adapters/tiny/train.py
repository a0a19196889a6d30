"""Train the tiny backbone on the procedural world with flow matching and teacher forcing.

Each training clip is ``[sink frame | window - 1 consecutive frames]`` (the sink comes from the
start of its video, possibly far earlier, as at inference once the cache rolls). Clean and noisy
copies of the clip run as one sequence under a block-causal mask: clean frames attend to clean
frames of their own and earlier blocks (the recache pass), noisy frames attend to clean frames of
earlier blocks and to their own noisy block (a denoising pass). Every block draws its own noise
level. Run in pieces: training stops after ``time_limit_minutes`` with a checkpoint and resumes
from it when started again.

    python -m lrag_adapters.tiny.train CONFIG.yaml [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from .model import TinyConfig, TinyDiT
from .params import TinyParams


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: TinyParams = TinyParams(weights=None)
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
    time_limit_minutes: float = 10.0
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0
    device: str = "auto"


def render_corpus(cfg: TrainConfig, first_seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Videos of the procedural world: uint8 frames [n, T, 3, H, W], actions [n, T, A]."""
    from lrag_adapters.world import make_clip

    frames, actions = [], []
    for seed in range(first_seed, first_seed + n):
        clip, act, _ = make_clip(seed, cfg.video_frames)
        frames.append(torch.from_numpy(((clip + 1) * 127.5).round().astype(np.uint8)))
        actions.append(torch.from_numpy(act.astype(np.float32)))
    return torch.stack(frames), torch.stack(actions)


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
    steps = torch.tensor(p.steps, device=dev)
    steps = p.shift * steps / (1 + (p.shift - 1) * steps)
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


def _flat_optimizer(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """AdamW state as safetensors-ready tensors plus JSON metadata."""
    tensors, meta = {}, {"param_groups": opt.state_dict()["param_groups"]}
    for i, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, meta


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for name, value in tensors.items():
        i, key = name.split(".", 1)
        state.setdefault(int(i), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path: Path, model, ema, opt, step: int, cfg: TrainConfig) -> None:
    """Write a checkpoint folder atomically (a temp folder renamed over the old one)."""
    tmp = path.with_name(path.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()},
              str(tmp / "ema.safetensors"))
    tensors, meta = _flat_optimizer(opt)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": meta,
                                                "config": cfg.model_dump(mode="json")}))
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        for f in old.iterdir():
            f.unlink()
        old.rmdir()


def export_weights(ckpt: Path, dest: Path) -> None:
    """Ship the EMA weights as fp16 safetensors with the model params beside them."""
    state = load_file(str(ckpt / "ema.safetensors"))
    meta = json.loads((ckpt / "state.json").read_text())
    params = {k: v for k, v in meta["config"]["model"].items() if k != "weights"}
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(dest),
              metadata={"params": json.dumps(params), "step": str(meta["step"])})


def plot_log(log_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*train), lw=0.8, label="train")
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set(xlabel="step", ylabel="flow-matching MSE", yscale="log", title="tiny backbone")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def train(cfg: TrainConfig) -> int:
    from tqdm import tqdm

    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                       if cfg.device == "auto" else cfg.device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = cfg.model
    torch.manual_seed(cfg.seed)
    model = TinyDiT(TinyConfig.from_params(p)).to(dev)
    ema = TinyDiT(model.cfg).to(dev).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, ckpt = 0, out / "checkpoint"
    if (ckpt / "state.json").exists():
        state = json.loads((ckpt / "state.json").read_text())
        model.load_state_dict(load_file(str(ckpt / "model.safetensors"), device=str(dev)))
        ema.load_state_dict(load_file(str(ckpt / "ema.safetensors"), device=str(dev)))
        _load_optimizer(opt, load_file(str(ckpt / "optimizer.safetensors"), device=str(dev)),
                        state["optimizer"])
        step = state["step"]
        print(f"resumed from {ckpt} at step {step}", file=sys.stderr)
    t0 = time.time()
    frames, actions = render_corpus(cfg, cfg.seed * 100_000, cfg.videos)
    val_frames, val_actions = render_corpus(cfg, cfg.seed * 100_000 + cfg.videos, cfg.val_videos)
    frames, actions = frames.to(dev), actions.to(dev)
    val_frames, val_actions = val_frames.to(dev), val_actions.to(dev)
    print(f"rendered {cfg.videos}+{cfg.val_videos} videos in {time.time() - t0:.1f}s",
          file=sys.stderr)
    gen = torch.Generator().manual_seed(cfg.seed + step)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
    log = (out / "log.jsonl").open("a")
    start, bar = time.time(), tqdm(initial=step, total=cfg.steps, desc="train tiny")
    while step < cfg.steps:
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (
            1 + math.cos(math.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        clip, act = sample_clips(frames, actions, cfg.batch_size, p.window, cfg.sink_gap_prob, gen)
        with amp:
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
            row = {"step": step, "loss": float(loss.detach()), "lr": lr,
                   "seconds": time.time() - start}
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
    print(f"step {step}/{cfg.steps}; weights: {out / 'tiny_world.safetensors'}"
          + ("" if step >= cfg.steps else " (time limit: run again to resume)"))
    return 0


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
    return train(TrainConfig.model_validate(apply_overrides(data, args.set)))


if __name__ == "__main__":
    sys.exit(main())
