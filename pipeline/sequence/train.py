"""Stage two: train a sequence model on the cached features.

Each epoch trains on one random clip per training video, validates on the group-aware
validation subset (never the test list), and writes ``run.dir/checkpoints/last.pt`` (and
``best.pt`` when validation accuracy improves), ``history.csv`` and ``curves.png``.

Checkpoints hold only tensors and plain Python values (loaded with ``weights_only=True``):
model, optimizer and grad-scaler state, the RNG state, the completed epoch count, the resolved
config, class names, the cache fingerprint and the feature width. Together with the
per-epoch seeding of clip sampling (sampling.py) and a learning rate computed from the step
alone, that makes a resumed CPU run end with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.cache.fingerprint import fingerprint_differences
from pipeline.cache.reader import cache_rows, open_cache
from pipeline.config import config_diff, config_from_dict, save_config
from pipeline.device import autocast_dtype, dtype_name, resolve_device, set_threads
from pipeline.errors import ActrecError
from pipeline.experiments.track import track_run
from pipeline.fileio import atomic_path
from pipeline.sequence.checkpoint import load_checkpoint, make_checkpoint, restore_rng, save_checkpoint
from pipeline.sequence.metrics import topk_accuracy, video_scores
from pipeline.sequence.models import build_model
from pipeline.sequence.resident import host_load
from pipeline.sequence.sampling import EvalClips, TrainClips

log = logging.getLogger(__name__)

ASSUMED_FPS = 25.0  # UCF-101's rate, for caches that do not record their videos' frame rate


@dataclass
class Run:
    """What one training run works with: the model and its optimiser on a device, and the progress so far.

    ``state`` holds the completed epoch count, the best validation result and the history; it is what a
    checkpoint records besides the weights, so a resumed run picks up exactly here.
    """
    cfg: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    state: dict = field(default_factory=lambda: {"epoch": 0, "best_val_acc": -1.0, "best_val_loss": math.inf,
                                                 "best_epoch": 0, "history": []})
    loss_fn: nn.Module = field(default_factory=nn.CrossEntropyLoss)
    resident: Any = None  # ResidentFeatures when the features live on the device (resident.py)

    @property
    def dir(self) -> Path:
        return Path(self.cfg.run.dir)


def train(cfg, resume: bool = False, on_epoch=None) -> dict:
    """Train ``cfg.model`` on the cached features of ``cfg.data.split``; returns a summary of the run.

    ``on_epoch(row)`` is called with each epoch's history row once the epoch's checkpoint is written; an
    exception it raises (a tuner pruning the run) stops training there, the checkpoint kept.
    """
    started = time.perf_counter()
    cache = open_cache(cfg)
    previous = previous_checkpoint(cfg, cache, resume)
    if previous is not None and previous["epoch"] >= cfg.train.epochs:
        log.info(f"training already done: {cfg.run.dir}/checkpoints/last.pt finished {previous['epoch']} epochs "
                 f"with the same config and cache (best val acc {previous['best_val_acc']:.3f}); skipping. Use "
                 f"another run.dir or delete {cfg.run.dir} to train again")
        return run_summary(previous, Path(cfg.run.dir), seconds=0.0, skipped=True)
    train_set, val_set, split_name = training_data(cfg, cache)
    run = build_run(cfg, cache, previous)
    run.resident = resident_features(cfg, cache, train_set, val_set, run.device)
    run.dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.dir / "config.yaml")
    precision = f", {dtype_name(run.amp_dtype)} autocast" if run.amp_dtype else ""
    log.info(f"training {cfg.model.name} on {len(train_set)} videos (validation: {len(val_set)}) of split "
             f"{split_name}: {sum(p.numel() for p in run.model.parameters()):,} parameters, device "
             f"{run.device}{precision}")
    with track_run(cfg, run.state) as track:
        for epoch in range(run.state["epoch"], cfg.train.epochs):
            run_epoch(run, train_set, val_set, cache, epoch)
            track(run.state["history"][-1])
            if on_epoch is not None:
                on_epoch(run.state["history"][-1])
    summary = run_summary(run.state, run.dir, seconds=time.perf_counter() - started, skipped=False)
    log.info(f"done: {summary['epochs']} epochs in {summary['seconds']:.1f}s; best val acc "
             f"{summary['best_val_acc']:.3f} at epoch {summary['best_epoch']}; checkpoints in {run.dir}/checkpoints")
    return summary


def previous_checkpoint(cfg, cache, resume: bool) -> dict | None:
    """The run's last.pt when training should continue from it or is already done; None to start afresh.

    Refuses a last.pt made with other settings, and ``--resume`` without one.
    """
    last_path = Path(cfg.run.dir) / "checkpoints" / "last.pt"
    if not last_path.exists():
        if resume:
            raise ActrecError(f"--resume: no checkpoint at {last_path} to continue from. Run without --resume to "
                              f"start training, or point run.dir at the run to continue")
        return None
    previous = load_checkpoint(last_path)
    check_continues(cfg, previous, cache.fingerprint, resume, last_path)
    warn_if_schedule_stretches(cfg, previous)
    return previous


def build_run(cfg, cache, previous: dict | None) -> Run:
    """The model, optimiser and scaler on the configured device: fresh (seeded) or restored from ``previous``."""
    set_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device, option="train.device")
    amp_dtype = autocast_dtype(device, cfg.train.precision)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, cache.dim, len(cache.class_names)).to(device)
    run = Run(cfg, model, build_optimizer(cfg, model), torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
              device, amp_dtype)
    if previous is not None:
        model.load_state_dict(previous["model"])
        run.optimizer.load_state_dict(previous["optimizer"])
        run.scaler.load_state_dict(previous.get("scaler") or {})
        restore_rng(previous["rng"], device)
        run.state = {key: previous[key] for key in run.state}
        log.info(f"resuming {run.dir}/checkpoints/last.pt after epoch {run.state['epoch']} of {cfg.train.epochs}")
        warn_if_resumed_elsewhere(run)
    return run


def warn_if_resumed_elsewhere(run: Run) -> None:
    """A run resumed on another device or precision goes on, but is no longer bit-exact: say so (history.csv
    records each epoch's device and precision)."""
    last = run.state["history"][-1] if run.state["history"] else {}
    before = (last.get("device"), last.get("precision"))
    now = (str(run.device), dtype_name(run.amp_dtype))
    if before[0] is not None and before != now:
        log.warning(f"{run.dir} ran its first {run.state['epoch']} epochs on {before[0]} in {before[1]} and "
                    f"continues on {now[0]} in {now[1]} (train.device, train.precision): the result will differ "
                    f"from an uninterrupted run's in the last digits")


def warn_if_schedule_stretches(cfg, previous: dict) -> None:
    """Extending a cosine run with --resume re-stretches the cosine over the new epoch count: say how the rate
    jumps, so a longer run is a choice and not a surprise."""
    old_epochs, done = previous["config"]["train"]["epochs"], previous["epoch"]
    if cfg.train.schedule != "cosine" or old_epochs == cfg.train.epochs:
        return
    old_cfg = config_from_dict(previous["config"], source="checkpoint")
    log.warning(f"train.epochs {old_epochs} -> {cfg.train.epochs} with the cosine schedule: the rate now follows "
                f"a cosine over {cfg.train.epochs} epochs, so at epoch {done} it goes from "
                f"{learning_rate(old_cfg, done):.3g} to {learning_rate(cfg, done):.3g} and decays to 0 by epoch "
                f"{cfg.train.epochs}")


def run_epoch(run: Run, train_set: TrainClips, val_set: EvalClips, cache, epoch: int) -> None:
    """Train one epoch, validate, and write the checkpoints and history that record it."""
    cfg, state, started = run.cfg, run.state, time.perf_counter()
    train_set.set_epoch(epoch)
    if run.resident is not None:
        train_loss, train_acc = train_epoch_resident(run, train_set, epoch)
    else:
        loader = make_loader(train_set, cfg.train.batch_size, cfg.train.workers, order_seed=(cfg.train.seed, epoch))
        train_loss, train_acc = train_epoch(run, loader, epoch)
    val_loss, val_acc = validate(run, val_set) if len(val_set) else (math.nan, math.nan)
    # Small validation sets saturate accuracy early; among equal accuracies the lower loss wins.
    improved = not len(val_set) or (val_acc, -val_loss) > (state["best_val_acc"], -state["best_val_loss"])
    if improved:
        state.update(best_val_acc=val_acc, best_val_loss=val_loss, best_epoch=epoch + 1)
    state["epoch"] = epoch + 1
    state["history"].append({"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                             "val_loss": val_loss, "val_acc": val_acc,
                             "lr": learning_rate(cfg, epoch), "seconds": time.perf_counter() - started,
                             "device": str(run.device), "precision": dtype_name(run.amp_dtype)})
    checkpoint = make_checkpoint(cfg, run.model, run.optimizer, run.scaler, state, cache, run.device,
                                 clip_seconds=train_set.mean_span() / (cache.fps or ASSUMED_FPS))
    if improved:
        save_checkpoint(checkpoint, run.dir / "checkpoints" / "best.pt")
    # History first: once last.pt says the epoch is done, a rerun skips it and would not write it again.
    write_history(state["history"], run.dir)
    save_checkpoint(checkpoint, run.dir / "checkpoints" / "last.pt")
    log.info(f"epoch {epoch + 1}/{cfg.train.epochs}  train loss {train_loss:.4f} acc {train_acc:.3f}  "
             f"val loss {val_loss:.4f} acc {val_acc:.3f}{'  *best' if improved and len(val_set) else ''}")


def training_data(cfg, cache) -> tuple[TrainClips, EvalClips, str]:
    """Training clips and validation videos of the configured split (the test list is not read)."""
    from pipeline.inputs.datasets import load_split

    split = load_split(cfg, check_videos=False)
    if split.class_names != cache.class_names:
        raise ActrecError(f"{cfg.cache.path} lists other classes than {cfg.data.splits}/classInd.txt; re-run "
                          f"`actrec embed` for this dataset or point cache.path at its cache")
    train_rows, train_labels = cache_rows(cache, split.train, "training")
    val_rows, val_labels = cache_rows(cache, split.val, "validation")
    if not train_rows:
        raise ActrecError(f"split {split.name} leaves no training videos in {cfg.cache.path}")
    if not val_rows:
        log.warning("no validation videos (data.val_fraction = 0); best.pt follows the last epoch")
    flip = use_flip(cfg, cache)
    where = cache.place(host_load(cfg.cache.load), flip=flip)
    log.info(f"features: {cache.nbytes_to_load(flip) / 2**20:.1f} MiB for {len(cache)} videos, "
             f"{'held in memory' if where == 'memory' else 'read from disk per clip'}")
    train_set = TrainClips(cache, train_rows, train_labels, cfg.train.sequence_length, cfg.train.seed,
                           flip=flip, sampler=cfg.train.sampler)
    val_set = EvalClips(cache, val_rows, val_labels, cfg.train.sequence_length, cfg.eval.clips)
    return train_set, val_set, split.name


def use_flip(cfg, cache) -> bool:
    """train.flip resolved against the cache: 'auto' uses mirrored features where the cache has them."""
    if cfg.train.flip is True and not cache.has_flip:
        raise ActrecError(f"train.flip=true but {cfg.cache.path} has no mirrored features; embed them with "
                          f"--set embed.flip=true (a new cache), or set train.flip to auto or false")
    return cache.has_flip if cfg.train.flip == "auto" else cfg.train.flip


def check_continues(cfg, ckpt: dict, fingerprint: dict, resume: bool, path: Path) -> None:
    """Refuse to continue (or skip) an existing last.pt made on another cache or with other training settings."""
    run_dir = path.parent.parent
    if ckpt["fingerprint"] != fingerprint:
        differences = "; ".join(fingerprint_differences(ckpt["fingerprint"], fingerprint))
        raise ActrecError(f"{path} was trained on another feature cache than {cfg.cache.path} "
                          f"({differences}). Use another run.dir "
                          f"(--set run.dir=...) or delete {run_dir} to train on this cache")
    # Keys that change the features are the cache fingerprint's to compare (above).
    changed = config_diff(ckpt["config"], cfg.to_dict(), "training", "test list")
    blocking = {key: change for key, change in changed.items() if key != "train.epochs"}
    if ckpt["epoch"] >= cfg.train.epochs:
        # A finished run: eval.* only mattered for choosing best.pt, which is done; evaluating with more clips is fine.
        blocking = {key: change for key, change in blocking.items() if not key.startswith("eval.")}
    if blocking:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in blocking.items())
        raise ActrecError(f"{run_dir} holds a run trained with other settings ({listed}). Use another run.dir "
                          f"(--set run.dir=...), or delete {run_dir} to start over")
    if "train.epochs" in changed and not resume:
        old, new = changed["train.epochs"]
        raise ActrecError(f"{path} is a run with train.epochs={old} ({ckpt['epoch']} done); pass --resume to "
                          f"continue it to train.epochs={new}, or use another run.dir, or delete {run_dir}")


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def learning_rate(cfg, progress: float) -> float:
    """The rate at ``progress`` epochs into training: constant, or cosine from train.lr down to 0."""
    if cfg.train.schedule == "cosine":
        return cfg.train.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress / cfg.train.epochs, 1.0)))
    return cfg.train.lr


def make_loader(dataset, batch_size: int, workers: int, order_seed=None) -> DataLoader:
    """Batches in a fixed order (``order_seed``: a permutation drawn from it) so runs repeat exactly."""
    order = list(range(len(dataset))) if order_seed is None else clip_order(order_seed, len(dataset)).tolist()
    # An explicit generator keeps worker seeding from consuming the global RNG that dropout draws from.
    return DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers,
                      generator=torch.Generator().manual_seed(0), persistent_workers=False)


def clip_order(order_seed, n: int) -> np.ndarray:
    """The order an epoch visits its ``n`` clips in, drawn from ``order_seed`` (train.seed, epoch)."""
    return np.random.default_rng(list(order_seed)).permutation(n)


def train_epoch(run: Run, loader, epoch: int) -> tuple[float, float]:
    """One pass over the training clips; mean loss and accuracy of the clips seen."""
    cfg, model, device = run.cfg, run.model, run.device
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch", leave=False, dynamic_ncols=True)
    for step, (clips, labels) in enumerate(bar):
        clips, labels = clips.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss, logits = train_step(run, clips, labels, learning_rate(cfg, epoch + step / len(loader)))
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum().item()
        seen += len(labels)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
    return total_loss / seen, correct / seen


def train_step(run: Run, clips: torch.Tensor, labels: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch already on the device; the (detached) loss and the logits."""
    cfg, model, optimizer, scaler, amp_dtype = run.cfg, run.model, run.optimizer, run.scaler, run.amp_dtype
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(run.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(clips)
        loss = run.loss_fn(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.train.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


def train_epoch_resident(run: Run, train_set: TrainClips, epoch: int) -> tuple[float, float]:
    """``train_epoch`` on device-resident features: the same batches in the same order, gathered on the device.

    Loss and accuracy are summed on the device, so a step never waits for the GPU to report back.
    """
    from pipeline.sequence.resident import batches, epoch_plan

    cfg, device = run.cfg, run.device
    run.model.train()
    plan = epoch_plan(train_set, run.resident)
    labels_all = torch.as_tensor(train_set.labels, dtype=torch.long, device=device)
    order = clip_order((cfg.train.seed, epoch), len(train_set))
    steps = math.ceil(len(train_set) / cfg.train.batch_size)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    bar = tqdm(batches(order, cfg.train.batch_size, device), total=steps, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
               unit="batch", leave=False, dynamic_ncols=True)
    for step, positions in enumerate(bar):
        labels = labels_all[positions]
        loss, logits = train_step(run, run.resident.gather(plan[positions]), labels,
                                  learning_rate(cfg, epoch + step / steps))
        total_loss += loss.double() * len(positions)
        correct += (logits.argmax(dim=1) == labels).sum()
    return float(total_loss) / len(train_set), int(correct) / len(train_set)


def resident_features(cfg, cache, train_set: TrainClips, val_set: EvalClips, device):
    """The run's videos' features on the training device, or None to read clips through the DataLoader."""
    from pipeline.sequence.resident import ResidentFeatures, choose_placement

    rows = train_set.rows + val_set.rows
    if not choose_placement(cfg.cache.load, cache, rows, train_set.flip, device):
        return None
    resident = ResidentFeatures(cache, rows, device, train_set.flip)
    log.info(f"features of the {len(rows)} training and validation videos on {device} "
             f"({resident.features.nbytes / 2**20:.1f} MiB): clips gathered there, no DataLoader")
    return resident


@torch.no_grad()
def predict_clips(model, dataset: EvalClips, batch_size: int, device, amp_dtype=None,
                  desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits of every evaluation clip ``[N, K, C]`` and the labels ``[N]`` of the dataset's videos."""
    model.eval()
    videos_per_batch = max(1, batch_size // dataset.clips)
    loader = make_loader(dataset, videos_per_batch, workers=0)
    logits, labels = [], []
    for clips, batch_labels in tqdm(loader, desc=desc, unit="batch", leave=False, disable=desc is None):
        b, k = clips.shape[:2]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(clips.to(device).flatten(0, 1))
        logits.append(out.float().reshape(b, k, -1).cpu().numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(logits), np.concatenate(labels)


def validate(run: Run, dataset: EvalClips) -> tuple[float, float]:
    """Clip-level cross-entropy and video-level accuracy (clip probabilities averaged) on the validation videos."""
    if run.resident is not None:
        from pipeline.sequence.resident import predict_resident

        logits, labels = predict_resident(run.model, dataset, run.resident, run.cfg.eval.batch_size, run.amp_dtype)
    else:
        logits, labels = predict_clips(run.model, dataset, run.cfg.eval.batch_size, run.device, run.amp_dtype)
    loss = nn.functional.cross_entropy(torch.from_numpy(logits).flatten(0, 1),
                                       torch.from_numpy(labels).repeat_interleave(logits.shape[1]))
    return float(loss), topk_accuracy(video_scores(logits), labels, 1)


def write_history(history: list[dict], run_dir: Path) -> None:
    """history.csv (one row per epoch) and curves.png."""
    from pipeline.plots import plot_curves

    with atomic_path(run_dir / "history.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    plot_curves(history, run_dir / "curves.png", title=run_dir.name)


def run_summary(state: dict, run_dir: Path, seconds: float, skipped: bool) -> dict:
    last = state["history"][-1] if state["history"] else {}
    return {"run_dir": str(run_dir), "epochs": state["epoch"], "best_epoch": state["best_epoch"],
            "best_val_acc": state["best_val_acc"], "train_loss": last.get("train_loss"),
            "train_acc": last.get("train_acc"), "val_acc": last.get("val_acc"), "seconds": round(seconds, 2),
            "skipped": skipped}
