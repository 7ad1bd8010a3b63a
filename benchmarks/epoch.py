"""Rows 8 and 9: seconds per UCF-101-sized training epoch on device-resident features, and the seed's own
training step (its BiLSTM + attention with the ResNet-152 inside, batch 4, train-mode BatchNorm) next to ours.

Row 8 runs the real ``train_epoch`` with cache.load=device on a UCF-101-shaped cache of random 2048-d
features with the UCF-101 model (BiLSTM 1024, attention, L = 40, batch 16): on the CPU over ``train_steps``
batches scaled to 9,537 clips, and on a GPU, when there is one, over a whole epoch of 9,537 clips. Row 9 times
the seed's step and ours in the same process on the same device, so the ratio is against the seed's real cost.
"""

from __future__ import annotations

import logging
import time

import torch

from benchmarks.common import UCF101_VIDEOS_TRAIN, Sizes, derive, row
from benchmarks.stage_two import cache_epoch_seconds_per_clip, training_run
from pipeline.config import Config

log = logging.getLogger(__name__)

SEED_BATCH = 4  # the seed's batch size
GPU_EPOCH_TARGET_S = 3.0


def resident_epoch_seconds(cfg: Config, device: torch.device, clips: int) -> float:
    """Seconds per clip of ``train_epoch`` on device-resident features over ``clips`` clips on ``device`` (after
    a warm-up epoch)."""
    from pipeline.sequence.loop import train_epoch

    run, train_set = training_run(derive(cfg, {"cache.load": "device", "train.device": device.type}), clips)
    warm_up = train_set.rows
    train_set.rows = warm_up[:cfg.train.batch_size * 2]
    train_epoch(run, train_set, 0)
    train_set.rows = warm_up
    _sync(device)
    started = time.perf_counter()
    train_epoch(run, train_set, 1)  # returns floats: the GPU has finished
    return (time.perf_counter() - started) / clips


def seed_step_seconds(cfg: Config, backbone_name: str, device: torch.device, steps: int) -> float:
    """Seconds per clip of the seed's training step: ``SEED_BATCH`` clips of L frames through the frozen
    backbone left in train mode (BatchNorm on batch statistics, as the seed runs it), then the sequence
    model's step. Frames are random tensors: the seed's JPEG loading (row 3) would only add to its cost."""
    from benchmarks.stage_two import seed_training_step
    from pipeline.embed.backbones import resolve_backbone
    from pipeline.sequence.loop import build_optimizer
    from pipeline.sequence.models import build_model

    length, img = cfg.train.sequence_length, cfg.embed.img_dim
    backbone = resolve_backbone(backbone_name, "none").build(device).to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        dim = backbone.eval()(torch.zeros(1, 3, img, img, device=device)).shape[-1]
    backbone.train()
    torch.manual_seed(0)
    model = build_model(cfg, dim, 101).to(device)
    optimizer, loss_fn = build_optimizer(cfg, model), torch.nn.CrossEntropyLoss()
    frames = torch.randn(SEED_BATCH * length, 3, img, img, device=device)
    labels = torch.zeros(SEED_BATCH, dtype=torch.long, device=device)
    seed_training_step(backbone, model, optimizer, loss_fn, frames, labels)  # warm-up
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        seed_training_step(backbone, model, optimizer, loss_fn, frames, labels)
    _sync(device)
    return (time.perf_counter() - started) / (steps * SEED_BATCH)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternating_cpu_rounds(cfg: Config, sizes: Sizes, clips: int) -> tuple[float, float]:
    """Median seconds per clip of the resident path and of the DataLoader path (row 3's measurement) on the CPU,
    in ``sizes.repeats`` alternating rounds: on a shared machine, one round of each says little."""
    import statistics

    resident, loader = [], []
    for _ in range(sizes.repeats):
        resident.append(resident_epoch_seconds(derive(cfg, {"train.device": "cpu"}), torch.device("cpu"), clips))
        loader.append(cache_epoch_seconds_per_clip(cfg, sizes.train_steps)[0])
    return statistics.median(resident), statistics.median(loader)


def seed_next_to_ours(cfg: Config, sizes: Sizes, device: torch.device, clips: int) -> tuple[float, float]:
    """Median seconds per clip of the seed's step and of our resident epoch, measured in alternating rounds so
    that both see the same machine."""
    import statistics

    seed, ours = [], []
    for _ in range(sizes.repeats):
        ours.append(resident_epoch_seconds(derive(cfg, {"cache.load": "device"}), device, clips))
        seed.append(seed_step_seconds(cfg, sizes.seed_backbone, device, max(1, sizes.seed_clips // 2)))
    return statistics.median(seed), statistics.median(ours)


def bench_epoch(cfg: Config, sizes: Sizes, command: str) -> list[dict]:
    """Rows 8 (CPU, and GPU when present) and 9 (the seed's step vs ours on the fastest device here)."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows, per_clip = [], {}
    what = (f"L={cfg.train.sequence_length}, {cfg.model.name} {cfg.model.hidden_dim}"
            f"{' + attention' if cfg.model.attention else ''}, batch {cfg.train.batch_size}")
    for device in devices:
        log.info("bench row 8: a UCF-101-sized epoch on device-resident features (%s)", device.type)
        gpu = device.type == "cuda"
        clips = UCF101_VIDEOS_TRAIN if gpu else sizes.train_steps * cfg.train.batch_size
        if gpu:
            per_clip[device.type], loader = resident_epoch_seconds(derive(cfg, {"train.device": "cuda"}), device,
                                                                   clips), None
        else:
            per_clip[device.type], loader = alternating_cpu_rounds(cfg, sizes, clips)
        epoch = per_clip[device.type] * UCF101_VIDEOS_TRAIN
        rows.append(row(f"8-{device.type}", f"seconds per UCF-101 epoch ({UCF101_VIDEOS_TRAIN} clips, {what}), "
                                            f"cache.load=device, {device.type}",
                        f"{epoch:.1f} s per epoch" + ("" if gpu else f" (from {clips} clips; DataLoader path "
                                                                     f"{loader * UCF101_VIDEOS_TRAIN:.1f} s)"),
                        None if gpu else loader / per_clip[device.type],
                        f"< {GPU_EPOCH_TARGET_S:g} s (one H100)" if gpu else "report, ratio = DataLoader / resident",
                        epoch < GPU_EPOCH_TARGET_S if gpu else None, command, seconds_per_clip=per_clip[device.type],
                        clips_timed=clips, dataloader_seconds_per_clip=loader))
    device = devices[-1]
    log.info("bench row 9: the seed's training step (%s inside, batch %d) vs ours (%s)", sizes.seed_backbone,
             SEED_BATCH, device.type)
    seed, ours = seed_next_to_ours(derive(cfg, {"train.device": device.type}), sizes, device,
                                   UCF101_VIDEOS_TRAIN if device.type == "cuda" else sizes.train_steps
                                   * cfg.train.batch_size)
    per_clip[device.type] = ours
    ratio = seed / per_clip[device.type]
    rows.append(row("9", f"the seed's training step ({sizes.seed_backbone} inside in train mode, batch {SEED_BATCH}) "
                         f"vs ours on device-resident features, {device.type}",
                    f"{seed * UCF101_VIDEOS_TRAIN / 60:.1f} vs {per_clip[device.type] * UCF101_VIDEOS_TRAIN / 60:.2f} "
                    f"min per UCF-101 epoch", ratio, "report", None, command, seconds_per_clip_seed=seed,
                    seconds_per_clip_ours=per_clip[device.type], seed_batch=SEED_BATCH))
    return rows
