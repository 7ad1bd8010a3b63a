"""Stage two: train a sequence model on the cached features.

Each epoch trains on one random clip per training video, validates on the group-aware
validation subset (never the test list), and writes ``run.dir/checkpoints/last.pt`` (and
``best.pt`` when validation accuracy improves), ``history.csv`` and ``curves.png``.

With ``train.refit`` a second phase follows: a fresh model with the same settings trains on the training and
validation videos for the best epoch count validation chose, writing ``checkpoints/refit.pt`` after each epoch
(and ``refit_history.csv``); evaluation then scores that model. An interrupted refit continues when run again.

Checkpoints hold only tensors and plain Python values (loaded with ``weights_only=True``):
model, optimizer and grad-scaler state, the RNG state, the completed epoch count, the resolved
config, class names, the cache fingerprint and the feature width. Together with the
per-epoch seeding of clip sampling (sampling.py) and a learning rate computed from the step
alone, that makes a resumed CPU run end with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import time
from pathlib import Path

import torch

from pipeline.cache.fingerprint import fingerprint_differences
from pipeline.cache.reader import cache_rows, open_cache
from pipeline.config import Config, config_diff, config_from_dict, runtime_option, save_config, stage_runtime
from pipeline.device import autocast_dtype, dtype_name, resolve_device, set_threads
from pipeline.errors import ActrecError
from pipeline.fileio import atomic_path
from pipeline.sequence.checkpoint import (
    load_checkpoint,
    make_checkpoint,
    restore_rng,
    restore_scaler,
    save_checkpoint,
)
from pipeline.sequence.clips import ClipSource, clip_source
from pipeline.sequence.datasets import EvalClips, TrainClips
from pipeline.sequence.loop import REFIT, SELECTION, Outputs, Run, build_optimizer, learning_rate, train_epoch, validate
from pipeline.sequence.models import build_model
from pipeline.sequence.resident import host_load

log = logging.getLogger(__name__)

ASSUMED_FPS = 25.0  # UCF-101's rate, for caches that do not record their videos' frame rate


def train(cfg: Config, resume: bool = False, on_epoch=None) -> dict:
    """Train ``cfg.model`` on the cached features of ``cfg.data.split``; returns a summary of the run.

    ``on_epoch(report)`` is called with each epoch's ``epoch_report`` once the epoch's checkpoint is written
    (tracking is handed in this way: ``pipeline.tracking.track_run``); an exception it raises (a tuner pruning
    the run) stops training there, the checkpoint kept.
    """
    started = time.perf_counter()
    cache = open_cache(cfg)
    previous = previous_checkpoint(cfg, cache, resume)
    if previous is not None and previous["epoch"] >= cfg.train.epochs and not refit_pending(cfg, cache, previous):
        log.info(f"training already done: {cfg.run.dir}/checkpoints/last.pt finished {previous['epoch']} epochs "
                 f"with the same config and cache (best val acc {previous['best_val_acc']:.3f}); skipping. Use "
                 f"another run.dir or delete {cfg.run.dir} to train again")
        return run_summary(previous, Path(cfg.run.dir), seconds=0.0, skipped=True)
    train_set, val_set, split_name = training_data(cfg, cache)
    run = build_run(cfg, cache, previous, train_set.rows + val_set.rows, train_set.flip)
    run.dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.dir / "config.yaml")
    precision = f", {dtype_name(run.amp_dtype)} autocast" if run.amp_dtype else ""
    log.info(f"training {cfg.model.name} on {len(train_set)} videos (validation: {len(val_set)}) of split "
             f"{split_name}: {sum(p.numel() for p in run.model.parameters()):,} parameters, device "
             f"{run.device}{precision}")
    for epoch in range(run.state["epoch"], cfg.train.epochs):
        run_epoch(run, train_set, val_set, cache, epoch)
        if on_epoch is not None:
            on_epoch(epoch_report(run.state))
    if cfg.train.refit:
        refit(run, cache, train_set, val_set)
    summary = run_summary(run.state, run.dir, seconds=time.perf_counter() - started, skipped=False)
    log.info(f"done: {summary['epochs']} epochs in {summary['seconds']:.1f}s; best val acc "
             f"{summary['best_val_acc']:.3f} at epoch {summary['best_epoch']}; checkpoints in {run.dir}/checkpoints")
    return summary


def epoch_report(state: dict) -> dict:
    """What an epoch callback is told: the epoch's history row and the run's best validation result so far."""
    return {**state["history"][-1], "best_val_acc": state["best_val_acc"], "best_val_loss": state["best_val_loss"]}


def previous_checkpoint(cfg: Config, cache, resume: bool) -> dict | None:
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


def build_run(cfg: Config, cache, previous: dict | None, videos: list[int], flip: bool) -> Run:
    """The model, optimiser and scaler on the configured device, fresh (seeded) or restored from ``previous``,
    and the clip source of the cache rows ``videos`` (``flip``: with their mirrored features)."""
    runtime = stage_runtime(cfg, "train")
    set_threads(runtime.threads)
    device = resolve_device(runtime.device, option=runtime_option(cfg, "train", "device"))
    amp_dtype = autocast_dtype(device, runtime.precision)
    clips = clip_source(cfg.cache.load, cache, videos, flip, device, cfg.train.workers)
    run = fresh_run(cfg, cache, device, amp_dtype, clips)
    if previous is not None:
        resume_run(run, previous)
    return run


def fresh_run(cfg: Config, cache, device: torch.device, amp_dtype, clips: ClipSource,
              outputs: Outputs = SELECTION) -> Run:
    """A new model (initialised from train.seed), its optimiser and grad scaler, reading clips from ``clips``."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, cache.dim, len(cache.class_names)).to(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return Run(cfg, model, build_optimizer(cfg, model), scaler, device, amp_dtype, clips, outputs=outputs)


def resume_run(run: Run, previous: dict) -> None:
    """Put a checkpoint's weights, optimiser, scaler, RNG and progress back into ``run``."""
    run.model.load_state_dict(previous["model"])
    run.optimizer.load_state_dict(previous["optimizer"])
    restore_scaler(run.scaler, previous.get("scaler") or {})
    restore_rng(previous["rng"], run.device)
    run.state = {key: previous[key] for key in run.state}
    log.info(f"resuming {run.dir}/checkpoints/{run.outputs.last} after epoch {run.state['epoch']} of "
             f"{run.cfg.train.epochs}")
    warn_if_resumed_elsewhere(run)


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


def warn_if_schedule_stretches(cfg: Config, previous: dict) -> None:
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


def refit_config(cfg: Config, epochs: int) -> Config:
    """The refit phase's settings: the run's, for the ``epochs`` validation chose (a cosine spans those)."""
    refit_cfg = copy.deepcopy(cfg)
    refit_cfg.train.epochs = epochs
    return refit_cfg


def refit_checkpoint(cfg: Config, cache, selected: dict) -> dict | None:
    """The run's refit.pt when it refits the epoch count ``selected`` (a last.pt) chose with these settings; None
    when there is none, or when it refit another epoch count (the run was extended since): that one starts over."""
    path = Path(cfg.run.dir) / "checkpoints" / REFIT.last
    if not path.exists():
        return None
    previous = load_checkpoint(path)
    if previous["best_epoch"] != selected["best_epoch"]:
        log.info(f"{path} refit {previous['best_epoch']} epochs, validation now chooses {selected['best_epoch']}: "
                 f"refitting afresh")
        return None
    check_continues(refit_config(cfg, selected["best_epoch"]), previous, cache.fingerprint, True, path)
    return previous


def refit_pending(cfg: Config, cache, selected: dict) -> bool:
    """Whether ``train.refit`` still has epochs to train after the finished selection phase ``selected``."""
    if not cfg.train.refit:
        return False
    previous = refit_checkpoint(cfg, cache, selected)
    return previous is None or previous["epoch"] < selected["best_epoch"]


def refit(selected: Run, cache, train_set: TrainClips, val_set: EvalClips) -> None:
    """Phase two of ``train.refit``: a fresh model with the run's settings trained on the training and validation
    videos for the epoch count validation chose; continues an interrupted refit.pt."""
    epochs = selected.state["best_epoch"]
    cfg = refit_config(selected.cfg, epochs)
    run = fresh_run(cfg, cache, selected.device, selected.amp_dtype, selected.clips, outputs=REFIT)
    for key in ("best_val_acc", "best_val_loss", "best_epoch"):  # what the refit model was chosen by
        run.state[key] = selected.state[key]
    previous = refit_checkpoint(selected.cfg, cache, selected.state)
    if previous is not None:
        resume_run(run, previous)
    videos = TrainClips(cache, train_set.rows + val_set.rows, train_set.labels + val_set.labels, train_set.length,
                        train_set.seed, train_set.flip, cfg.train.sampler)
    if run.state["epoch"] < epochs:
        log.info(f"refit: a fresh {cfg.model.name} on the {len(videos)} training and validation videos for the "
                 f"{epochs} epochs validation chose")
    no_validation = EvalClips(cache, [], [], val_set.length, val_set.clips)
    for epoch in range(run.state["epoch"], epochs):
        run_epoch(run, videos, no_validation, cache, epoch)


def run_epoch(run: Run, train_set: TrainClips, val_set: EvalClips, cache, epoch: int) -> None:
    """Train one epoch, validate, and write the checkpoints and history that record it."""
    cfg, state, started = run.cfg, run.state, time.perf_counter()
    train_loss, train_acc = train_epoch(run, train_set, epoch)
    val_loss, val_acc = validate(run, val_set) if len(val_set) else (math.nan, math.nan)
    # Small validation sets saturate accuracy early; among equal accuracies the lower loss wins. A phase that
    # keeps no best checkpoint (the refit) keeps the best epoch validation chose.
    improved = run.outputs.best is not None and (
        not len(val_set) or (val_acc, -val_loss) > (state["best_val_acc"], -state["best_val_loss"]))
    if improved:
        state.update(best_val_acc=val_acc, best_val_loss=val_loss, best_epoch=epoch + 1)
    state["epoch"] = epoch + 1
    state["history"].append({"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                             "val_loss": val_loss, "val_acc": val_acc,
                             "lr": learning_rate(cfg, epoch), "seconds": time.perf_counter() - started,
                             "device": str(run.device), "precision": dtype_name(run.amp_dtype)})
    checkpoint = make_checkpoint(cfg, run.model, run.optimizer, run.scaler, state, cache, run.device,
                                 clip_seconds=train_set.mean_span() / (cache.fps or ASSUMED_FPS),
                                 trained_on=run.outputs.trained_on)
    if improved:
        save_checkpoint(checkpoint, run.dir / "checkpoints" / run.outputs.best)
    # History first: once last.pt says the epoch is done, a rerun skips it and would not write it again.
    write_history(state["history"], run.dir / run.outputs.history, run.dir / run.outputs.curves)
    save_checkpoint(checkpoint, run.dir / "checkpoints" / run.outputs.last)
    phase = "refit " if run.outputs is REFIT else ""
    log.info(f"{phase}epoch {epoch + 1}/{cfg.train.epochs}  train loss {train_loss:.4f} acc {train_acc:.3f}  "
             f"val loss {val_loss:.4f} acc {val_acc:.3f}{'  *best' if improved and len(val_set) else ''}")


def training_data(cfg: Config, cache) -> tuple[TrainClips, EvalClips, str]:
    """Training clips and validation videos of the configured split (the test list is not read)."""
    from pipeline.inputs.formats import load_split

    split = load_split(cfg, check_videos=False)
    if split.class_names != cache.class_names:
        raise ActrecError(f"{cfg.cache.path} lists other classes than {cfg.data.splits}/classInd.txt; re-run "
                          f"`actrec embed` for this dataset or point cache.path at its cache")
    train_rows, train_labels = cache_rows(cache, split.train, "training")
    val_rows, val_labels = cache_rows(cache, split.val, "validation")
    if not train_rows:
        raise ActrecError(f"split {split.name} leaves no training videos in {cfg.cache.path}")
    if not val_rows and cfg.train.refit:
        raise ActrecError("train.refit: true needs validation videos to choose the epoch count (data.val_fraction "
                          "is 0); set data.val_fraction above 0, or train.refit to false")
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


def use_flip(cfg: Config, cache) -> bool:
    """train.flip resolved against the cache: 'auto' uses mirrored features where the cache has them."""
    if cfg.train.flip is True and not cache.has_flip:
        raise ActrecError(f"train.flip=true but {cfg.cache.path} has no mirrored features; embed them with "
                          f"--set embed.flip=true (a new cache), or set train.flip to auto or false")
    return cache.has_flip if cfg.train.flip == "auto" else cfg.train.flip


def check_continues(cfg: Config, ckpt: dict, fingerprint: dict, resume: bool, path: Path) -> None:
    """Refuse to continue (or skip) an existing last.pt made on another cache or with other training settings."""
    run_dir = path.parent.parent
    if ckpt["fingerprint"] != fingerprint:
        differences = "; ".join(fingerprint_differences(ckpt["fingerprint"], fingerprint))
        raise ActrecError(f"{path} was trained on another feature cache than {cfg.cache.path} "
                          f"({differences}). Use another run.dir "
                          f"(--set run.dir=...) or delete {run_dir} to train on this cache")
    # Keys that change the features are the cache fingerprint's to compare (above).
    changed = config_diff(ckpt["config"], cfg.to_dict(), "training", "test list")
    # The selection phase does not depend on train.refit: a finished run may still be refit (refit_checkpoint).
    blocking = {key: change for key, change in changed.items() if key not in ("train.epochs", "train.refit")}
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


def write_history(history: list[dict], csv_path: Path, curves_path: Path) -> None:
    """The history as CSV (one row per epoch) and its curves."""
    from pipeline.plots import plot_curves

    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    plot_curves(history, curves_path, title=csv_path.parent.name)


def run_summary(state: dict, run_dir: Path, seconds: float, skipped: bool) -> dict:
    last = state["history"][-1] if state["history"] else {}
    return {"run_dir": str(run_dir), "epochs": state["epoch"], "best_epoch": state["best_epoch"],
            "best_val_acc": state["best_val_acc"], "train_loss": last.get("train_loss"),
            "train_acc": last.get("train_acc"), "val_acc": last.get("val_acc"), "seconds": round(seconds, 2),
            "skipped": skipped}
