"""Rows 1 and 2: how close a whole ``embed`` comes to the bare backbone, and how it compares with the seed's loading.

Row 1 divides whole-embed frames/s (decode, preprocess, forward, HDF5 write) by bare-forward frames/s on
preloaded tensors, for the videos and the frames sources. Row 2 runs the seed's loading path (PIL per frame,
bicubic, fp32 NCHW, DataLoader) over the same JPEG frames.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch

from pipeline.bench.common import Sizes, derive, row, timed
from pipeline.config import Config

log = logging.getLogger(__name__)


def bare_forward_fps(model, frames: int, batch_size: int, img_dim: int, device, amp_dtype=None) -> float:
    """Backbone frames/s on preloaded uint8 tensors of the embed stage's shape and batch (normalisation included)."""
    from pipeline.embed.backbone import forward

    batch = torch.randint(0, 256, (batch_size, 3, img_dim, img_dim), dtype=torch.uint8)
    batch = batch.contiguous(memory_format=torch.channels_last)
    forward(model, batch, device, amp_dtype)  # warm-up: allocator and kernel selection
    if device.type == "cuda":
        torch.cuda.synchronize()
    steps = max(1, -(-frames // batch_size))
    started = time.perf_counter()
    for _ in range(steps):
        forward(model, batch, device, amp_dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - started)


def seed_loading_fps(cfg: Config, model) -> float:
    """Frames/s of the seed's path: one PIL JPEG open per frame, per-frame transforms, fp32 NCHW, DataLoader."""
    from torch.utils.data import DataLoader

    from pipeline.bench.seed_frames import SeedFrames
    from pipeline.embed.workers import resolve_workers

    frames = SeedFrames(cfg)
    nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    loader = DataLoader(frames, batch_size=cfg.embed.batch_size, num_workers=resolve_workers(cfg.embed.workers))
    started = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            nchw(batch)
    return len(frames) / (time.perf_counter() - started)


def embed_fps(cfg: Config, source: str, rep: int = 0) -> tuple[float, dict]:
    """Frames/s of a whole ``embed`` into a fresh cache (decode, preprocess, forward, HDF5 write)."""
    from pipeline.embed.run import embed

    path = cfg.cache.path.replace(".h5", f"-{source}-{rep}.h5")
    summary = embed(derive(cfg, {"embed.source": source, "cache.path": path}))
    return summary["frames_per_second"], summary


def decode_fps(cfg: Config) -> float:
    """Frames/s of decoding plus resizing alone, in one thread (where the time outside the forward goes)."""
    from pipeline.embed.backbone import frame_resize
    from pipeline.embed.run import decode_jobs
    from pipeline.embed.workers import pieces
    from pipeline.inputs.datasets import embed_items

    _, items = embed_items(cfg, check_videos=False)
    jobs = decode_jobs(cfg, items)
    resize = frame_resize(cfg.embed)
    seconds, frames = timed(lambda: sum(len(p.frames) for p in pieces(jobs, resize, cfg.embed.batch_size, workers=0)
                                        if not p.end))
    return frames / seconds


def bench_embed(cfg: Config, sizes: Sizes, command: str, with_seed: bool) -> list[dict]:
    """Rows 1 (per source) and, ``with_seed``, 2, on the synthetic dataset of ``cfg``."""
    from pipeline.embed.backbone import load_backbone

    model = load_backbone(cfg.embed.backbone, cfg.embed.weights, torch.device("cpu"), cfg.embed.img_dim)
    frames = sizes.videos * sizes.frames
    rows, ours = [], {}
    for source in ("videos", "frames"):
        log.info("bench row 1: embed efficiency, source=%s", source)
        efficiency, ours[source] = _efficiency_row(cfg, model, sizes, source, command)
        rows.append(efficiency)
    rows[0]["details"]["with_a_free_core"] = _efficiency_with_a_free_core(cfg, model, frames)
    if with_seed:
        log.info("bench row 2: the seed's loading path")
        seed = seed_loading_fps(cfg, model)
        speedup = ours["frames"] / seed
        rows.append(row("2", "embed vs the seed's loading path (same JPEG frames)",
                        f"{ours['frames']:.0f} vs {seed:.0f} frames/s", speedup, "> 1", speedup > 1,
                        command.replace("--only embed", "--only embed --only seed"),
                        ours_frames_fps=ours["frames"], ours_videos_fps=ours["videos"], seed_fps=seed,
                        speedup_videos_source=round(ours["videos"] / seed, 3)))
    return rows


def _efficiency_row(cfg: Config, model, sizes: Sizes, source: str, command: str) -> tuple[dict, float]:
    """Row 1 for one source, and its median embed frames/s.

    Whole embed and bare forward alternate ``sizes.repeats`` times and medians are compared, since the bare
    rate alone drifts by several percent within one process on a shared machine."""
    from pipeline.embed.workers import resolve_workers

    frames = sizes.videos * sizes.frames
    bare, embedded = [], []
    for rep in range(sizes.repeats):
        bare.append(bare_forward_fps(model, frames, cfg.embed.batch_size, cfg.embed.img_dim, torch.device("cpu")))
        embedded.append(embed_fps(cfg, source, rep)[0])
    ours, bare_median = float(np.median(embedded)), float(np.median(bare))
    ratio = ours / bare_median
    decode = decode_fps(derive(cfg, {"embed.source": source}))
    threads = torch.get_num_threads()
    return row(f"1-{source}", f"embed efficiency, source={source}", f"{ours:.0f} / {bare_median:.0f} frames/s",
               ratio, ">= 0.90", ratio >= 0.90, command, embed_fps=embedded,
               bare_forward_fps=[round(b, 1) for b in bare], frames=frames, backbone=cfg.embed.backbone,
               img_dim=cfg.embed.img_dim, batch_size=cfg.embed.batch_size, threads=threads,
               decode_workers=resolve_workers(cfg.embed.workers), decode="worker processes",
               decode_resize_fps_one_thread=round(decode, 1),
               # Every core runs the forward, so decoding can only hide in what it takes from it.
               decode_share_of_cpu=round(1 / decode / (threads / bare_median + 1 / decode), 3)), ours


def _efficiency_with_a_free_core(cfg: Config, model, frames: int) -> dict:
    """Row 1 with one thread fewer for the forward pass than there are cores: decoding then has a core of its
    own, as it has next to a GPU. Shows whether the gap is the pipeline or the shared CPU."""
    threads = torch.get_num_threads()
    if threads < 2:
        return {}
    torch.set_num_threads(threads - 1)
    try:
        bare = bare_forward_fps(model, frames, cfg.embed.batch_size, cfg.embed.img_dim, torch.device("cpu"))
        embedded, _ = embed_fps(derive(cfg, {"embed.threads": threads - 1}), "videos", rep=99)
    finally:
        torch.set_num_threads(threads)
    return {"forward_threads": threads - 1, "embed_fps": embedded, "bare_forward_fps": round(bare, 1),
            "ratio": round(embedded / bare, 3)}
