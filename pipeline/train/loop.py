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
import math
import os
import time
import zipfile
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.config import config_from_dict, save_config
from pipeline.device import autocast_dtype, resolve_device, set_threads
from pipeline.errors import ActrecError
from pipeline.features.cache import fingerprint_differences
from pipeline.train.metrics import topk_accuracy, video_scores
from pipeline.train.models import build_model
from pipeline.train.sampling import (
    EvalClips,
    TrainClips,
    cache_rows,
    load_features,
    open_cache,
)

CHECKPOINT_FORMAT = 1
CHECKPOINT_KEYS = ("format", "epoch", "model", "optimizer", "scaler", "rng", "config", "class_names", "fingerprint",
                   "feature_dim", "best_val_acc", "best_val_loss", "best_epoch", "history")
# Keys that do not change what an epoch computes: a run may continue with other values.
# train.epochs may grow only with --resume.
NOT_TRAINING_KEYS = {"data.videos", "data.frames", "train.workers", "train.threads", "train.device", "train.precision",
                     "eval.batch_size", "eval.checkpoint", "eval.device", "eval.precision", "eval.threads"}
# eval.clips decides validation accuracy, and so which epoch becomes best.pt.
TRAINING_SECTIONS = ("data", "model", "train", "eval")


def train(cfg, resume: bool = False) -> dict:
    """Train ``cfg.model`` on the cached features of ``cfg.data.split``; returns a summary of the run."""
    started = time.perf_counter()
    run_dir = Path(cfg.run.dir)
    last_path = run_dir / "checkpoints" / "last.pt"
    cache = open_cache(cfg)
    previous = load_checkpoint(last_path) if last_path.exists() else None
    if previous is None and resume:
        raise ActrecError(f"--resume: no checkpoint at {last_path} to continue from. Run without --resume to start "
                          f"training, or point run.dir at the run to continue")
    if previous is not None and not continues_run(cfg, previous, cache.fingerprint, resume, last_path):
        click.echo(f"training already done: {last_path} finished {previous['epoch']} epochs with the same config "
                   f"and cache (best val acc {previous['best_val_acc']:.3f}); skipping. Use another run.dir or "
                   f"delete {run_dir} to train again")
        return run_summary(previous, run_dir, seconds=0.0, skipped=True)

    train_set, val_set, split_name = training_data(cfg, cache)

    set_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device, option="train.device")
    amp_dtype = autocast_dtype(device, cfg.train.precision)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, cache.dim, len(cache.class_names)).to(device)
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    state = {"epoch": 0, "best_val_acc": -1.0, "best_val_loss": math.inf, "best_epoch": 0, "history": []}
    if previous is not None:
        model.load_state_dict(previous["model"])
        optimizer.load_state_dict(previous["optimizer"])
        scaler.load_state_dict(previous.get("scaler") or {})
        restore_rng(previous["rng"], device)
        state = {key: previous[key] for key in state}
        click.echo(f"resuming {last_path} after epoch {state['epoch']} of {cfg.train.epochs}")

    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    precision = f", {str(amp_dtype).replace('torch.', '')} autocast" if amp_dtype else ""
    click.echo(f"training {cfg.model.name} on {len(train_set)} videos (validation: {len(val_set)}) of split "
               f"{split_name}: {sum(p.numel() for p in model.parameters()):,} parameters, device {device}{precision}")
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(state["epoch"], cfg.train.epochs):
        epoch_started = time.perf_counter()
        train_set.set_epoch(epoch)
        loader = make_loader(train_set, cfg.train.batch_size, cfg.train.workers, order_seed=(cfg.train.seed, epoch))
        train_loss, train_acc = train_epoch(model, loader, optimizer, scaler, loss_fn, cfg, epoch, device, amp_dtype)
        val_loss, val_acc = validate(model, val_set, cfg, device, amp_dtype) if len(val_set) else (math.nan, math.nan)
        # Small validation sets saturate accuracy early; among equal accuracies the lower loss wins.
        improved = not len(val_set) or (val_acc, -val_loss) > (state["best_val_acc"], -state["best_val_loss"])
        if improved:
            state.update(best_val_acc=val_acc, best_val_loss=val_loss, best_epoch=epoch + 1)
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                                 "val_loss": val_loss, "val_acc": val_acc,
                                 "lr": learning_rate(cfg, epoch), "seconds": time.perf_counter() - epoch_started})
        checkpoint = make_checkpoint(cfg, model, optimizer, scaler, state, cache, device)
        if improved:
            save_checkpoint(checkpoint, run_dir / "checkpoints" / "best.pt")
        # History first: once last.pt says the epoch is done, a rerun skips it and would not write it again.
        write_history(state["history"], run_dir)
        save_checkpoint(checkpoint, last_path)
        tqdm.write(f"epoch {epoch + 1}/{cfg.train.epochs}  train loss {train_loss:.4f} acc {train_acc:.3f}  "
                   f"val loss {val_loss:.4f} acc {val_acc:.3f}{'  *best' if improved and len(val_set) else ''}")

    summary = run_summary(state, run_dir, seconds=time.perf_counter() - started, skipped=False)
    click.echo(f"done: {summary['epochs']} epochs in {summary['seconds']:.1f}s; best val acc "
               f"{summary['best_val_acc']:.3f} at epoch {summary['best_epoch']}; checkpoints in {run_dir}/checkpoints")
    return summary


def training_data(cfg, cache) -> tuple[TrainClips, EvalClips, str]:
    """Training clips and validation videos of the configured split (the test list is not read)."""
    from pipeline.data.datasets import load_split

    split = load_split(cfg, check_videos=False)
    if split.class_names != cache.class_names:
        raise ActrecError(f"{cfg.cache.path} lists other classes than {cfg.data.splits}/classInd.txt; re-run "
                          f"`actrec embed` for this dataset or point cache.path at its cache")
    train_rows, train_labels = cache_rows(cache, split.train, "training")
    val_rows, val_labels = cache_rows(cache, split.val, "validation")
    if not train_rows:
        raise ActrecError(f"split {split.name} leaves no training videos in {cfg.cache.path}")
    if not val_rows:
        click.echo("warning: no validation videos (data.val_fraction = 0); best.pt follows the last epoch", err=True)
    where = load_features(cache, cfg.cache.load)
    click.echo(f"features: {cache.nbytes / 2**20:.1f} MiB for {len(cache)} videos, "
               f"{'held in memory' if where == 'memory' else 'read from disk per clip'}")
    train_set = TrainClips(cache, train_rows, train_labels, cfg.train.sequence_length, cfg.train.seed,
                           flip=cache.has_flip)
    val_set = EvalClips(cache, val_rows, val_labels, cfg.train.sequence_length, cfg.eval.clips)
    return train_set, val_set, split.name


def continues_run(cfg, ckpt: dict, fingerprint: dict, resume: bool, path: Path) -> bool:
    """Whether to train on from an existing last.pt (False: it already finished this config); refuse a mismatch."""
    run_dir = path.parent.parent
    if ckpt["fingerprint"] != fingerprint:
        differences = "; ".join(fingerprint_differences(ckpt["fingerprint"], fingerprint))
        raise ActrecError(f"{path} was trained on another feature cache than {cfg.cache.path} "
                          f"({differences}). Use another run.dir "
                          f"(--set run.dir=...) or delete {run_dir} to train on this cache")
    changed = config_changes(ckpt["config"], cfg.to_dict())
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
    return ckpt["epoch"] < cfg.train.epochs


def config_changes(old: dict, new: dict) -> dict:
    """``{dotted key: (old, new)}`` for the training keys whose values differ."""
    changes = {}
    for section in TRAINING_SECTIONS:
        for key in sorted(set(old.get(section, {})) | set(new.get(section, {}))):
            dotted = f"{section}.{key}"
            before, after = old.get(section, {}).get(key), new.get(section, {}).get(key)
            if dotted not in NOT_TRAINING_KEYS and before != after:
                changes[dotted] = (before, after)
    return changes


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
    order = list(range(len(dataset)))
    if order_seed is not None:
        order = np.random.default_rng(list(order_seed)).permutation(len(dataset)).tolist()
    # An explicit generator keeps worker seeding from consuming the global RNG that dropout draws from.
    return DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers,
                      generator=torch.Generator().manual_seed(0), persistent_workers=False)


def train_epoch(model, loader, optimizer, scaler, loss_fn, cfg, epoch, device, amp_dtype) -> tuple[float, float]:
    """One pass over the training clips; mean loss and accuracy of the clips seen."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch", leave=False, dynamic_ncols=True)
    for step, (clips, labels) in enumerate(bar):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, epoch + step / len(loader))
        clips, labels = clips.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(clips)
            loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.train.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum().item()
        seen += len(labels)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
    return total_loss / seen, correct / seen


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


def validate(model, dataset: EvalClips, cfg, device, amp_dtype) -> tuple[float, float]:
    """Clip-level cross-entropy and video-level accuracy (clip probabilities averaged) on the validation videos."""
    logits, labels = predict_clips(model, dataset, cfg.eval.batch_size, device, amp_dtype)
    loss = nn.functional.cross_entropy(torch.from_numpy(logits).flatten(0, 1),
                                       torch.from_numpy(labels).repeat_interleave(logits.shape[1]))
    return float(loss), topk_accuracy(video_scores(logits), labels, 1)


def make_checkpoint(cfg, model, optimizer, scaler, state: dict, cache, device) -> dict:
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": state["epoch"],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng},
        "config": cfg.to_dict(),
        "class_names": list(cache.class_names),
        "fingerprint": cache.fingerprint,
        "feature_dim": int(cache.dim),
        "best_val_acc": float(state["best_val_acc"]),
        "best_val_loss": float(state["best_val_loss"]),
        "best_epoch": int(state["best_epoch"]),
        "history": [dict(row) for row in state["history"]],
    }


def restore_rng(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda"):
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_checkpoint(checkpoint: dict, path: str | Path) -> None:
    """Write through a temp file in the same folder and rename: the old checkpoint survives any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by ``actrec train`` (tensors and plain values only), on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ActrecError(f"checkpoint {path} not found; run `actrec train` first (or check run.dir / the path)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways (zip, pickle, storage errors) on a damaged file
        with open(path, "rb") as f:
            head = f.read(4)
        foreign = head.strip(b"\x00") and head != b"PK\x03\x04"  # torch.save writes a zip; a crash leaves zeros
        # A complete zip that weights_only refuses holds more than tensors and plain values: someone else's file.
        if foreign or (zipfile.is_zipfile(path) and "Weights only" in str(exc)):
            raise ActrecError(f"{path} is not a checkpoint written by `actrec train`") from exc
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise ActrecError(f"checkpoint {path} is truncated or corrupt ({reason}). Delete "
                          f"it; best.pt / last.pt beside it may still be intact, or train again") from exc
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise ActrecError(f"{path} is not an actrec checkpoint (missing {', '.join(missing)})")
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise ActrecError(f"{path}: checkpoint format {ckpt['format']} is not the supported {CHECKPOINT_FORMAT}; "
                          f"train again with this version")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """The trained model of a loaded checkpoint, in eval mode on the CPU."""
    cfg = config_from_dict(ckpt["config"], source="checkpoint")
    model = build_model(cfg, ckpt["feature_dim"], len(ckpt["class_names"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def write_history(history: list[dict], run_dir: Path) -> None:
    """history.csv (one row per epoch) and curves.png."""
    from pipeline.plots import plot_curves

    tmp = run_dir / ".history.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, run_dir / "history.csv")
    plot_curves(history, run_dir / "curves.png", title=run_dir.name)


def run_summary(state: dict, run_dir: Path, seconds: float, skipped: bool) -> dict:
    last = state["history"][-1] if state["history"] else {}
    return {"run_dir": str(run_dir), "epochs": state["epoch"], "best_epoch": state["best_epoch"],
            "best_val_acc": state["best_val_acc"], "train_loss": last.get("train_loss"),
            "train_acc": last.get("train_acc"), "val_acc": last.get("val_acc"), "seconds": round(seconds, 2),
            "skipped": skipped}
