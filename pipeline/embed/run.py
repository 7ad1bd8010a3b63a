"""Stage one: every frame of every video -> frozen backbone -> the HDF5 feature cache.

``embed`` reads the list of videos, starts the decode workers (embed/workers.py) and only then imports torch
and the backbone's library, so the workers' start overlaps those imports and the backbone's loading; the work
itself (batches, forward passes, commits, shards) is embed/commit.py's.

Under torchrun each rank embeds a strided share of the videos still to do into its own shard and
rank 0 joins the shards into ``cache.path`` (cache/shards.py). What guarantees that a resumed run,
or a run on N ranks, writes the same features as one uninterrupted process: the features of a frame
must not depend on the other frames of its batch, nor on its row. With one batch shape the same
kernels run for every batch; on the CPU the tests check, bit for bit, that their rows are then
independent (resumed and 2-rank caches equal the one-process cache). On CUDA, cuDNN picks its
algorithms from the shape alone while ``torch.backends.cudnn.benchmark`` is off (the default, left
so); that GPU results are row-independent is not checked here (no GPU where the tests run).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.embed.workers import DecodePool, resolve_workers
from pipeline.errors import ActrecError
from pipeline.fileio import check_output
from pipeline.inputs.extract import check_frames_manifest
from pipeline.inputs.formats import embed_items

if TYPE_CHECKING:
    from pipeline.config import Config

log = logging.getLogger(__name__)


def embed(cfg: Config) -> dict:
    """Embed every frame of every video of ``embed_items(cfg)`` into cfg.cache.path; return the counts.

    Under torchrun, this rank's share goes into its shard and rank 0 joins the shards at the end."""
    marks = {"start": time.perf_counter()}  # when each step of the start-up was reached (the summary's "start_up")
    check_output(cfg.cache.path, "cache.path", replaces="a feature cache")  # never a checkpoint or a config
    class_names, items = embed_items(cfg, check_videos=cfg.embed.source == "videos")
    if not items:
        raise ActrecError(f"no videos to embed in {cfg.data.splits} (split {cfg.data.split}); check data.splits")
    if cfg.embed.source == "frames" and not Path(cfg.data.frames).is_dir():
        raise ActrecError(f"embed.source=frames but data.frames={cfg.data.frames} does not exist; run `actrec "
                          f"extract` first, or set embed.source=videos")
    if cfg.embed.source == "frames":
        check_frames_manifest(cfg)
    pool = _start_decoding(cfg, len(items))
    marks["workers_started"] = time.perf_counter()
    try:
        from pipeline.embed.commit import embed_videos  # torch, the backbone's library: while the workers start

        return embed_videos(cfg, class_names, items, pool, marks)
    finally:
        if pool is not None:
            pool.close()


def _start_decoding(cfg: Config, videos: int) -> DecodePool | None:
    """The decode worker processes (none for embed.workers=0), started before this process imports torch, so that
    their start (seconds of imports each) overlaps its own; they get their videos and the backbone's
    preprocessing once the cache says which videos are left (and stop unused when none is)."""
    workers = min(resolve_workers(cfg.embed.workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)), videos)
    return DecodePool(cfg.embed.batch_size, workers) if workers else None
