"""Rows 3 and 5b: stage two on a UCF-101-shaped 2048-d cache, against the seed's loop with the backbone inside.

Row 3 compares seconds per training clip on the cache (the real loader and ``train_epoch``) with the seed's
loop, where every frame of every clip is loaded from JPEG and run through a frozen ResNet at every step; it
also reports the FLOP ratio. Row 5b is the share of a cached training step spent loading data.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import UCF101_VIDEOS_TRAIN, Sizes, derive, row, timed
from pipeline.config import Config

log = logging.getLogger(__name__)

CACHE_DIM = 2048  # ResNet-152 features, as in the UCF-101 job
CACHE_CLASSES = 101


def feature_cache(sizes: Sizes, root: Path) -> Config:
    """A UCF-101-shaped cache (2048-d float16, 101 classes) of random features, and the config to train on it.

    The config is the schema's defaults (the UCF-101 job) with ``sizes.train_changes`` applied.
    """
    from pipeline.cache.writer import FeatureCacheWriter
    from pipeline.config import load_config
    from pipeline.embed.fingerprint import embed_fingerprint

    train_cfg = derive(load_config(None), {"cache.path": str(root / "features.h5"), "cache.load": "memory",
                                           "train.device": "cpu", "train.workers": 0, "embed.flip": False,
                                           **sizes.train_changes})
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    classes = [f"Class{i:03d}" for i in range(CACHE_CLASSES)]
    log.info("bench: writing a random %d-d cache of %d videos to %s", CACHE_DIM, sizes.cache_videos,
             train_cfg.cache.path)
    with FeatureCacheWriter(train_cfg.cache.path, embed_fingerprint(train_cfg), classes, CACHE_DIM) as writer:
        for v in range(sizes.cache_videos):
            features = rng.standard_normal((sizes.cache_frames, CACHE_DIM), dtype=np.float32)
            writer.add(f"Class{v % CACHE_CLASSES:03d}/v_bench_g01_c{v:03d}", v % CACHE_CLASSES, features)
    return train_cfg


def _training_parts(cfg: Config):
    """A fresh sequence model for the cache's features and its optimizer, as ``train`` builds them."""
    from pipeline.cache.reader import FeatureCache
    from pipeline.sequence.loop import build_optimizer
    from pipeline.sequence.models import build_model

    cache = FeatureCache(cfg.cache.path)
    torch.manual_seed(0)
    model = build_model(cfg, cache.dim, len(cache.class_names))
    return model, build_optimizer(cfg, model)


def training_run(cfg: Config, clips: int):
    """A fresh Run (``cfg.train.device``, the clip source ``cfg.cache.load`` picks) and a TrainClips of ``clips``
    positions, built as ``train`` builds them."""
    from pipeline.cache.reader import FeatureCache
    from pipeline.sequence.datasets import TrainClips
    from pipeline.sequence.train import build_run

    cache = FeatureCache(cfg.cache.path)
    cache.load_all()
    # Positions cycle over the cache's videos: an epoch of ``clips`` clips costs the same whichever videos they are.
    rows = [k % len(cache) for k in range(clips)]
    train_set = TrainClips(cache, rows, [int(cache.labels[r]) for r in rows], cfg.train.sequence_length, 0, False,
                           sampler=cfg.train.sampler)
    return build_run(cfg, cache, None, rows, flip=False), train_set


def cache_epoch_seconds_per_clip(cfg: Config, steps: int) -> tuple[float, float]:
    """Seconds per training clip on cached features (real clip source and ``train_epoch``), and the share of it
    spent loading clips."""
    from pipeline.sequence.loop import train_epoch

    batch = cfg.train.batch_size
    run, train_set = training_run(cfg, steps * batch)
    rows = train_set.rows
    train_set.rows = rows[:batch]
    train_epoch(run, train_set, 0)  # warm-up
    train_set.rows = rows
    total, _ = timed(train_epoch, run, train_set, 0)
    loading, _ = timed(lambda: [None for _ in run.clips.train_batches(train_set, np.arange(len(rows)), batch)])
    return total / len(rows), loading / total


def seed_training_step(backbone, model, optimizer, loss_fn, frames: torch.Tensor, labels: torch.Tensor) -> float:
    """One step of the seed's training loop, to reproduce its cost: the frozen backbone (ResNet-152 in the
    seed) runs over every frame of the clip inside the loop, then the sequence model takes a training step.

    ``frames``: (B * L, 3, H, W) fp32, the B clips' frames one clip after the other; ``labels``: (B,).
    Returns the loss.
    """
    with torch.no_grad():
        features = backbone(frames)
    model.train()
    loss = loss_fn(model(features.reshape(len(labels), -1, features.shape[-1])), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def seed_seconds_per_clip(cfg: Config, backbone_name: str, clips: int, jpeg_cfg: Config) -> float:
    """Seconds per clip of the seed's loop over ``clips`` clips of JPEG frames from ``jpeg_cfg``'s dataset."""
    from benchmarks.seed_frames import seed_frame_stream
    from pipeline.embed.backbones import resolve_backbone

    model, optimizer = _training_parts(cfg)
    backbone = resolve_backbone(backbone_name, "none").build(torch.device("cpu"))
    backbone = backbone.to(memory_format=torch.contiguous_format)
    frames = seed_frame_stream(jpeg_cfg, cfg.embed.img_dim)
    loss_fn = torch.nn.CrossEntropyLoss()
    labels = torch.zeros(1, dtype=torch.long)
    started = time.perf_counter()
    for _ in range(clips):
        # Loading is inside the timing: the seed decoded its JPEGs at every step too.
        clip = torch.stack([next(frames) for _ in range(cfg.train.sequence_length)])
        seed_training_step(backbone, model, optimizer, loss_fn, clip, labels)
    return (time.perf_counter() - started) / clips


def flops_per_clip(cfg: Config, backbone_name: str) -> tuple[float, float]:
    """FLOPs of one training clip on the cache (model forward + backward) and of the seed's (plus the backbone)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.embed.backbones import resolve_backbone

    model, _ = _training_parts(cfg)
    length, img = cfg.train.sequence_length, cfg.embed.img_dim
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(1, length, CACHE_DIM)).sum().backward()
    model_flops = counter.get_total_flops()
    backbone = resolve_backbone(backbone_name, "none").build(torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        backbone(torch.randn(1, 3, img, img))
    # The LSTM's flops are not counted by FlopCounterMode (no formula for its fused op): add them by hand.
    lstm_flops = _lstm_train_flops(cfg, length)
    return model_flops + lstm_flops, model_flops + lstm_flops + length * counter.get_total_flops()


def _lstm_train_flops(cfg: Config, length: int) -> float:
    """Multiply-adds x 2 of the (Bi)LSTM over ``length`` steps, forward and backward."""
    if cfg.model.name != "bilstm":
        return 0.0
    directions = 2 if cfg.model.bidirectional else 1
    hidden, flops, inputs = cfg.model.hidden_dim, 0.0, cfg.model.latent_dim
    for _ in range(cfg.model.layers):
        flops += directions * length * 2 * 4 * hidden * (inputs + hidden)
        inputs = hidden * directions
    return 3 * flops  # forward + backward (about twice the forward)


def bench_training(cfg: Config, jpeg_cfg: Config, sizes: Sizes, command: str) -> dict:
    """Row 3: a UCF-101 training epoch on the cache (``cfg``) vs the seed's loop over ``jpeg_cfg``'s frames."""
    log.info("bench row 3: training on the cache vs the seed's loop (%s)", sizes.seed_backbone)
    ours, _ = cache_epoch_seconds_per_clip(cfg, sizes.train_steps)
    seed = seed_seconds_per_clip(cfg, sizes.seed_backbone, sizes.seed_clips, jpeg_cfg)
    ours_flops, seed_flops = flops_per_clip(cfg, sizes.seed_backbone)
    ratio = seed / ours
    return row("3", f"training epoch on the cache vs the seed's loop ({sizes.seed_backbone} @ {cfg.embed.img_dim}, "
                    f"L={cfg.train.sequence_length})",
               f"{ours * UCF101_VIDEOS_TRAIN / 60:.1f} vs {seed * UCF101_VIDEOS_TRAIN / 60:.0f} min per UCF-101 epoch",
               ratio, ">= 50x", ratio >= 50, command, seconds_per_clip_cache=ours, seconds_per_clip_seed=seed,
               flop_ratio=round(seed_flops / ours_flops, 1), flops_per_clip_cache=ours_flops,
               flops_per_clip_seed=seed_flops, seed_frames_from="JPEG, seed's PIL path",
               batch_size=cfg.train.batch_size)


def bench_loading_share(cfg: Config, sizes: Sizes, command: str) -> dict:
    """Row 5b: the share of a training step on the cache spent loading clips."""
    log.info("bench row 5b: stage-two data loading share")
    _, share = cache_epoch_seconds_per_clip(cfg, sizes.train_steps)
    return row("5b", "stage-two data loading share of a training step", f"{share:.1%}", share, "< 5%", share < 0.05,
               command, batch_size=cfg.train.batch_size, sequence_length=cfg.train.sequence_length)
