"""``lrag train-embedder``: train a retrieval embedder on a latent corpus with composed losses.

A batch is ``batch_size`` chunks of ``seq_len`` consecutive frames (random video, random start)
from the training videos; the model maps the frames to (reconstruction, embedding) and the total
loss is ``sum_i weight_i * loss_i`` over the configured losses (any registered loss, by name).
AdamW, gradient clipping, bf16 autocast on CUDA. Train / validation split by video.

The batch of step ``t`` is drawn from a generator seeded by ``(seed, t)``, so a run resumed from a
checkpoint continues exactly as if it had not stopped. Run directory::

    config.yaml  metrics.jsonl  losses.png  retrieval_eval.json  retrieval_eval.png
    checkpoints/last, checkpoints/best   weights folders (``latent_ae`` ``weights``) + trainer
                                         state (optimizer.safetensors, trainer_state.json)
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pydantic import Field, ValidationError

from ..config import ComponentConfig, ConfigError, Strict, apply_overrides, component_errors, \
    read_config, validation_errors
from ..devices import resolve_device
from ..files import (append_jsonl, atomic_dir, folder_error, is_checkpoint, load_optimizer,
                     load_state_strict, read_jsonl, read_tensors, save_optimizer, write_jsonl,
                     write_yaml)
from ..interfaces import LossInputs
from .components import LossConfig, WeightedLoss, trainable_model

STATE_FILE, WEIGHTS_FILE = "trainer_state.json", "model.safetensors"


class RetrievalEvalConfig(Strict):
    exclusion: int = Field(5, ge=0, description="frames either side of a query, in its own "
                           "video, that are not candidates")
    baselines: list[ComponentConfig] = Field(
        default_factory=lambda: [ComponentConfig(name="avg_pool")],
        description="embedders evaluated beside the trained one")


def default_losses() -> list[LossConfig]:
    return [LossConfig(name=n) for n in
            ("reconstruction", "window_temporal_delta", "trajectory_smoothing")]


class TrainConfig(Strict):
    corpus: str = Field(description="a collect-latents out_dir")
    run_dir: str
    embedder: ComponentConfig = ComponentConfig(name="latent_ae")
    losses: list[LossConfig] = Field(default_factory=default_losses, min_length=1)
    seq_len: int = Field(8, ge=1, description="consecutive frames per chunk (S)")
    batch_size: int = Field(128, ge=1, description="chunks per step")
    steps: int = Field(10000, ge=1)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0: no clipping")
    amp: bool = Field(True, description="bf16 autocast on CUDA")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of videos held out")
    val_chunks: int = Field(512, ge=1, description="validation chunks (fixed, non-overlapping)")
    eval_every: int = Field(500, ge=1, description="steps between validation + checkpoints")
    log_every: int = Field(20, ge=1)
    workers: int = Field(8, ge=1, description="threads copying chunks into a batch")
    seed: int = 0
    device: str = "auto"
    resume: str | None = Field(None, description="a checkpoint folder to continue from")
    retrieval_eval: RetrievalEvalConfig = RetrievalEvalConfig()
    disable_plugins: list[str] = Field(default_factory=list)


def load_train_config(source, overrides: list[str] = ()) -> TrainConfig:
    """Validate the schema, the embedder, every loss and baseline (all errors at once)."""
    from ..plugins import load_plugins

    data = apply_overrides(read_config(source), list(overrides))
    errors: list[str] = []
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_errors(err)) from None
    registry = load_plugins(disabled=tuple(cfg.disable_plugins))
    comps = [("embedder", "embedder", cfg.embedder)]
    comps += [("loss", f"losses.{i}", c) for i, c in enumerate(cfg.losses)]
    comps += [("embedder", f"retrieval_eval.baselines.{i}", c)
              for i, c in enumerate(cfg.retrieval_eval.baselines)]
    for kind, where, comp in comps:
        errors += component_errors(registry, kind, where, comp.name, comp.params)
    if errors:
        raise ConfigError(errors)
    return cfg


# ---------------------------------------------------------------------------- data

def split_videos(corpus, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """(train, val) video indices: a seeded permutation; videos shorter than S are dropped."""
    usable = [i for i, v in enumerate(corpus.videos) if v.frames >= cfg.seq_len]
    order = np.random.default_rng(cfg.seed).permutation(usable).tolist()
    n_val = min(len(order) - 1, round(cfg.val_fraction * len(order)))
    n_val = max(n_val, 1 if cfg.val_fraction > 0 and len(order) > 1 else 0)
    train, val = sorted(order[n_val:]), sorted(order[:n_val])
    if not train:
        raise ConfigError([(f"corpus {corpus.root}: no video has seq_len={cfg.seq_len} frames "
                            f"(longest: {max(v.frames for v in corpus.videos)})")])
    return train, val


def step_picks(corpus, train: list[int], cfg: TrainConfig, step: int) -> list[tuple[int, int]]:
    """(video, start) of the chunks of step ``step``, drawn from a (seed, step) generator."""
    rng = np.random.default_rng([cfg.seed, step])
    videos = rng.choice(train, size=cfg.batch_size)
    return [(int(v), int(rng.integers(0, corpus.videos[v].frames - cfg.seq_len + 1)))
            for v in videos]


class BatchLoader:
    """Assembles the batch of the next step while this one trains: chunks are copied from the
    memory-mapped shards by ``workers`` threads (copies release the GIL) into one (pinned)
    tensor [B, S, C, H, W]."""

    def __init__(self, corpus, train: list[int], cfg: TrainConfig, pin: bool):
        self.corpus, self.train, self.cfg, self.pin = corpus, train, cfg, pin
        self.copiers = ThreadPoolExecutor(cfg.workers)
        self.ahead = ThreadPoolExecutor(1)
        self.pending = None

    def batch(self, step: int) -> torch.Tensor:
        picks = step_picks(self.corpus, self.train, self.cfg, step)
        s = self.cfg.seq_len
        out = torch.empty((len(picks), s, *self.corpus.frame_shape), pin_memory=self.pin)
        list(self.copiers.map(lambda i: out[i].copy_(
            self.corpus.frames(picks[i][0], picks[i][1], picks[i][1] + s)), range(len(picks))))
        return out

    def get(self, step: int, prefetch: bool) -> torch.Tensor:
        """The batch of ``step``; with ``prefetch`` start assembling ``step + 1``."""
        ready = self.pending if self.pending and self.pending[0] == step else None
        x = ready[1].result() if ready else self.batch(step)
        self.pending = (step + 1, self.ahead.submit(self.batch, step + 1)) if prefetch else None
        return x

    def close(self) -> None:
        self.ahead.shutdown()
        self.copiers.shutdown()


def val_chunks(corpus, val: list[int], cfg: TrainConfig) -> list[tuple[int, int]]:
    """Fixed validation chunks: non-overlapping per video, round-robin over videos."""
    per_video = [[(v, s) for s in range(0, corpus.videos[v].frames - cfg.seq_len + 1,
                                        cfg.seq_len)] for v in val]
    depth = max((len(p) for p in per_video), default=0)
    order = [p[d] for d in range(depth) for p in per_video if d < len(p)]
    return order[:cfg.val_chunks]


# ---------------------------------------------------------------------------- losses and steps

def loss_labels(cfg: TrainConfig) -> list[str]:
    names = [c.name for c in cfg.losses]
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


def compute_losses(model, losses: list, labels: list[str], x: torch.Tensor, amp: bool
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total and unweighted terms for chunks ``x`` [B, S, C, H, W]."""
    b, s = x.shape[:2]
    with torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
        recon, z = model(x.flatten(0, 1))  # [B*S, C, H, W], [B*S, D]
    inputs = LossInputs(embeddings=z.view(b, s, -1), latents=x, reconstruction=recon.view_as(x))
    terms = {label: loss(inputs) for label, loss in zip(labels, losses)}
    total = sum(loss.weight * terms[label] for label, loss in zip(labels, losses))
    return total, terms


@torch.no_grad()
def validate_model(model, losses, labels, corpus, chunks, cfg: TrainConfig, device, amp) -> dict:
    sums, total, n = {label: 0.0 for label in labels}, 0.0, 0
    for i in range(0, len(chunks), cfg.batch_size):
        part = chunks[i:i + cfg.batch_size]
        x = torch.stack([corpus.frames(v, s, s + cfg.seq_len) for v, s in part]).to(device)
        t, terms = compute_losses(model, losses, labels, x, amp)
        total += float(t) * len(part)
        for label in labels:
            sums[label] += float(terms[label]) * len(part)
        n += len(part)
    return {"total": total / n, "losses": {k: v / n for k, v in sums.items()}}


# ---------------------------------------------------------------------------- checkpoints

def save_checkpoint(folder: Path, embedder, opt, trainer_state: dict) -> None:
    """Weights folder (``embedder.save``), optimizer state and trainer state, swapped in whole."""
    with atomic_dir(folder) as tmp:
        embedder.save(tmp)
        save_optimizer(tmp, opt)
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))


def load_checkpoint(folder: Path, model, opt, device) -> dict:
    """Restore weights (strictly) and optimizer state; returns the trainer state."""
    if not is_checkpoint(folder, STATE_FILE, WEIGHTS_FILE):
        raise ConfigError([f"resume: {folder} is not a complete training checkpoint"])
    state = json.loads((folder / STATE_FILE).read_text())
    weights = read_tensors(folder / WEIGHTS_FILE, device, "embedder weights")
    load_state_strict(model, weights, f"resume: {folder}")
    load_optimizer(folder, opt, device)
    return state


# ---------------------------------------------------------------------------- the run

def train_embedder(cfg: TrainConfig,
                   progress: Callable[[int, int], object] | None = None) -> dict:
    """Train, validate every ``eval_every`` steps (checkpoints last/best), evaluate retrieval.
    ``progress(total, initial)``: an object with ``update(n)``, ``set_postfix`` and ``close``
    (e.g. tqdm)."""
    from ..plugins import load_plugins
    from .corpus import LatentCorpus
    from .retrieval_eval import plot_losses

    registry = load_plugins(disabled=tuple(cfg.disable_plugins))
    try:
        device = resolve_device(cfg.device)
    except ValueError as err:
        raise ConfigError([str(err)]) from None
    amp = cfg.amp and device.type == "cuda"
    run_dir, metrics = Path(cfg.run_dir), Path(cfg.run_dir) / "metrics.jsonl"
    ckpts = run_dir / "checkpoints"
    if ckpts.exists() and cfg.resume is None:
        last = ckpts / "last"
        advice = (f"set resume to {last} to continue" if is_checkpoint(last, STATE_FILE)
                  else "it has no complete checkpoint yet (interrupted before the first "
                  "eval_every steps): remove it")
        raise ConfigError([f"run_dir {run_dir} already has a checkpoints folder: {advice}, "
                           f"or choose another run_dir"])
    problem = folder_error(run_dir)
    if problem:
        raise ConfigError([f"run_dir: {problem}"])
    try:
        corpus = LatentCorpus(cfg.corpus)
    except ValueError as err:
        raise ConfigError([f"corpus: {err} (lrag collect-latents writes one)"]) from None
    train, val = split_videos(corpus, cfg)
    embedder = registry.build("embedder", cfg.embedder.name, cfg.embedder.params).to(device)
    model = trainable_model(embedder, cfg.embedder.name)
    embedder.embed(corpus.frames(train[0], 0, 1).to(device))  # frame shape check, clear error
    losses = [WeightedLoss(registry.build("loss", c.name, c.params), c.weight) for c in cfg.losses]
    baselines = _baselines(cfg, registry, device)  # built before training: errors come first
    labels = loss_labels(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, best, rows = 0, None, []
    if cfg.resume:
        state = load_checkpoint(Path(cfg.resume), model, opt, device)
        step, best = state["step"], state["best_val"]
        if metrics.exists():
            rows = [r for r in read_jsonl(metrics) if r["step"] <= step]
    ckpts.mkdir(parents=True, exist_ok=True)
    write_jsonl(metrics, rows)
    write_yaml(run_dir / "config.yaml", cfg.model_dump(mode="json"))
    chunks = val_chunks(corpus, val, cfg)

    loader = BatchLoader(corpus, train, cfg, pin=device.type == "cuda")
    bar = progress(cfg.steps, step) if progress else None
    model.train()
    clock, samples = time.perf_counter(), 0
    while step < cfg.steps:
        x = loader.get(step, prefetch=step + 1 < cfg.steps).to(device, non_blocking=True)
        # x: [B, S, C, H, W]
        total, terms = compute_losses(model, losses, labels, x, amp)
        opt.zero_grad(set_to_none=True)
        total.backward()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        step, samples = step + 1, samples + len(x)
        if bar is not None:
            bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            row = {"step": step, "split": "train", "total": float(total.detach()),
                   "losses": {k: float(v.detach()) for k, v in terms.items()},
                   "grad_norm": float(grad_norm), "samples_per_s": samples / (now - clock)}
            if not np.isfinite(row["total"]):
                raise FloatingPointError(f"step {step}: loss is {row['total']} ({row['losses']})")
            clock, samples = now, 0
            rows.append(row)
            append_jsonl(metrics, row)
            if bar is not None:
                bar.set_postfix(loss=f"{row['total']:.4g}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            best = _evaluate_and_save(cfg, embedder, model, opt, losses, labels, corpus, chunks,
                                      device, amp, step, best, rows, metrics, ckpts)
            plot_losses(rows, run_dir / "losses.png")
            model.train()
            clock = time.perf_counter()  # chunks/s counts training steps only
    if bar is not None:
        bar.close()
    loader.close()
    result = {"run_dir": str(run_dir), "step": step, "best_val": best}
    if val:
        result["retrieval"] = _retrieval_eval(cfg, baselines, embedder, corpus, val, device)
    return result


def _evaluate_and_save(cfg, embedder, model, opt, losses, labels, corpus, chunks, device, amp,
                       step, best, rows, metrics, ckpts):
    """Validation row, ``last`` checkpoint, and ``best`` when validation improved."""
    model.eval()
    improved = False
    if chunks:
        val = validate_model(model, losses, labels, corpus, chunks, cfg, device, amp)
        row = {"step": step, "split": "val", **val}
        rows.append(row)
        append_jsonl(metrics, row)
        improved = best is None or val["total"] < best
        best = val["total"] if improved else best
    state = {"step": step, "best_val": best, "config": cfg.model_dump(mode="json")}
    save_checkpoint(ckpts / "last", embedder, opt, state)
    if improved:
        save_checkpoint(ckpts / "best", embedder, opt, state)
    return best


def _baselines(cfg, registry, device) -> dict:
    """The retrieval evaluation's baseline embedders by name; a conditioned one (it reads the
    conditioning's frame signals, which a latent corpus does not hold) is a ConfigError."""
    built = {}
    for i, b in enumerate(cfg.retrieval_eval.baselines):
        built[b.name] = registry.build("embedder", b.name, b.params).to(device)
        if built[b.name].conditioned:
            raise ConfigError([f"retrieval_eval.baselines.{i}: {b.name!r} is a conditioned key "
                               "(it reads the conditioning's frame signals, which a latent "
                               "corpus does not hold): compare it in lrag run instead"])
    return built


def _retrieval_eval(cfg, baselines, embedder, corpus, val, device) -> dict:
    """Own-video top-1 on the validation videos: the trained embedder and the baselines."""
    from ..files import write_json
    from .retrieval_eval import compare_embedders, plot_retrieval

    embedders = {f"{cfg.embedder.name} (trained)": embedder, **baselines}
    videos = [corpus.frames(v) for v in val]
    result = compare_embedders(embedders, videos, device, cfg.retrieval_eval.exclusion)
    write_json(Path(cfg.run_dir) / "retrieval_eval.json", result)
    plot_retrieval(result, Path(cfg.run_dir) / "retrieval_eval.png")
    return result
