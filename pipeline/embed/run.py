"""Stage one: every frame of every video -> frozen backbone -> the HDF5 feature cache.

Worker processes decode and resize the videos (embed/workers.py), handing over uint8 chunks in
the dataset's sorted order; the main process packs them into batches that span video boundaries,
feeds the backbone (embed/feed.py) and commits each video as soon as its last frame is through.
Every forward pass has the same batch shape (the last batch is zero-padded).

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

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from pipeline import distributed
from pipeline.cache.lock import WriteLock
from pipeline.cache.reader import FeatureCache
from pipeline.cache.shards import committed_names, join, shard_files, shard_path, world_sizes
from pipeline.cache.writer import FeatureCacheWriter
from pipeline.config import runtime_option, stage_runtime
from pipeline.device import autocast_dtype, dtype_name, resolve_device, set_threads
from pipeline.embed import feed
from pipeline.embed.backbone import frame_resize, load_backbone
from pipeline.embed.fingerprint import device_kind, embed_fingerprint
from pipeline.embed.workers import DecodePool, Piece, pieces, resolve_workers
from pipeline.errors import ActrecError
from pipeline.fileio import check_output
from pipeline.inputs.extract import check_frames_manifest
from pipeline.inputs.formats import embed_items
from pipeline.inputs.splits import VideoItem, frames_dir
from pipeline.inputs.video import typical_fps

if TYPE_CHECKING:
    from pipeline.config import Config

log = logging.getLogger(__name__)

TIMING_KEYS = ("decode_wait", "pack", "submit", "wait", "write")


@dataclass
class _Video:
    """One video on its way through the batches: the features gathered so far and how many frames to expect."""
    item: VideoItem
    packed: int = 0              # frames put into batches
    expected: int | None = None  # frames in all, known once the video's last piece is through
    reason: str = ""             # why decoding failed, if it did
    header_frames: int | None = None  # its header's frame count, when decoding ended before it (frames kept)
    features: list = field(default_factory=list)
    flip_features: list = field(default_factory=list)
    received: int = 0


def decode_jobs(cfg: Config, items: list[VideoItem]) -> list[tuple[str, Path]]:
    """What the decode workers read for each item: the video file, or its extracted frames folder."""
    if cfg.embed.source == "frames":
        return [("frames", frames_dir(cfg, item)) for item in items]
    return [("videos", item.path) for item in items]


def _all_done(path: Path, fingerprint: dict, class_names: list[str], items: list[VideoItem]) -> bool:
    """True when an existing cache (with matching settings) already holds every item."""
    if not path.exists():
        return False
    cache = FeatureCache(path, expected_fingerprint=fingerprint)
    return cache.class_names == class_names and {item.name for item in items} <= set(cache.names)


def embed(cfg: Config) -> dict:
    """Embed every frame of every video of ``embed_items(cfg)`` into cfg.cache.path; return the counts.

    Under torchrun, this rank's share goes into its shard and rank 0 joins the shards at the end."""
    started = time.perf_counter()
    check_output(cfg.cache.path, "cache.path", replaces="a feature cache")  # never a checkpoint or a config
    runtime = stage_runtime(cfg, "embed")
    set_threads(runtime.threads)
    rank = distributed.current()
    class_names, items = embed_items(cfg, check_videos=cfg.embed.source == "videos")
    if not items:
        raise ActrecError(f"no videos to embed in {cfg.data.splits} (split {cfg.data.split}); check data.splits")
    path = Path(cfg.cache.path)
    fingerprint = embed_fingerprint(cfg)
    if _all_done(path, fingerprint, class_names, items):
        log.info(f"embed: all {len(items)} videos are already in {path}; nothing to do")
        return _summary(cfg, items, embedded=0, skipped=len(items), frames=0, failures={}, started=started,
                        embed_seconds=0.0)
    if cfg.embed.source == "frames" and not Path(cfg.data.frames).is_dir():
        raise ActrecError(f"embed.source=frames but data.frames={cfg.data.frames} does not exist; run `actrec "
                          f"extract` first, or set embed.source=videos")
    if cfg.embed.source == "frames":
        check_frames_manifest(cfg)

    option = runtime_option(cfg, "embed", "device")
    device = distributed.rank_device(resolve_device(runtime.device, option=option), rank)
    distributed.init(rank, device)
    pool = _start_decoding(cfg, len(items))
    try:
        amp_dtype = autocast_dtype(device, runtime.precision)
        model = load_backbone(cfg.embed.backbone, cfg.embed.weights, device, cfg.embed.img_dim)
        fingerprint["forward_dtype"] = dtype_name(amp_dtype)
        fingerprint["device"] = device_kind(device)
        run = _Run(cfg, rank, model, device, amp_dtype, fingerprint, class_names,
                   typical_fps([item.path for item in items]), pool)
        sharded = rank.launched or bool(shard_files(path))
        done, counts, seconds = (_embed_sharded if sharded else _embed_single)(run, items)
        failures = counts["failures"]
    finally:
        if pool is not None:
            pool.close()
        distributed.shutdown()
    return _summary(cfg, items, embedded=counts["embedded"], skipped=len(done), frames=counts["frames"],
                    failures=failures, started=started, embed_seconds=seconds, timing=counts["timing"])


def _start_decoding(cfg: Config, videos: int) -> DecodePool | None:
    """The decode worker processes (none for embed.workers=0), started before the backbone loads so that their
    start (seconds of imports each) overlaps it; they get their videos once the cache says which are left."""
    workers = min(resolve_workers(cfg.embed.workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)), videos)
    return DecodePool(frame_resize(cfg.embed), cfg.embed.batch_size, workers) if workers else None


@dataclass
class _Run:
    """What every rank's embedding needs besides the videos."""
    cfg: object
    rank: distributed.Rank
    model: torch.nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None
    fingerprint: dict
    class_names: list[str]
    fps: float | None  # the videos' typical frame rate, recorded in the cache
    pool: DecodePool | None = None  # decode workers already started (None: decode in this process)

    def writer(self, path: Path) -> FeatureCacheWriter:
        cfg = self.cfg
        return FeatureCacheWriter(path, self.fingerprint, self.class_names, self.model.feature_dim,
                                  flip=cfg.embed.flip, dtype=cfg.embed.dtype, config=cfg.to_dict(), fps=self.fps)

    def embed_into(self, writer: FeatureCacheWriter, todo: list[VideoItem], skipped: int) -> tuple[dict, float]:
        retried = sum(item.name in writer.failures for item in todo)
        log.info(f"embed{'' if not self.rank.launched else f' ({self.rank})'}: {len(todo)} videos to do, {skipped} "
                 f"already done" + (f" ({retried} failed before, retried)" if retried else "")
                 + f" -> {writer.path} [{self.cfg.embed.backbone}, {self.device}"
                 + (f", {str(self.amp_dtype).replace('torch.', '')}" if self.amp_dtype else "") + "]")
        started = time.perf_counter()
        counts = embed_and_commit(self.cfg, self.model, self.device, self.amp_dtype, writer, todo, self.pool)
        counts["failures"] = {name: writer.failures[name] for name in counts["failed"]}
        return counts, time.perf_counter() - started


def _embed_single(run: _Run, items: list[VideoItem]) -> tuple[set, dict, float]:
    """One process, no shards: append to cache.path directly (as it resumes)."""
    with run.writer(Path(run.cfg.cache.path)) as writer:
        done = {item.name for item in items if item.name in writer.done}
        counts, seconds = run.embed_into(writer, [item for item in items if item.name not in done], len(done))
    return done, counts, seconds


def _embed_sharded(run: _Run, items: list[VideoItem]) -> tuple[set, dict, float]:
    """This rank's strided share of what no cache or shard holds yet, into its shard; then rank 0 joins.

    Rank 0 takes the cache's lock (one embed per cache) and reads what is done before any rank writes, and
    every rank gets the outcome, the list or the refusal, so all share the same list or stop with the same
    line; finished videos in shards of another world size are kept and the rest redistributed."""
    path, rank = Path(run.cfg.cache.path), run.rank
    lock = WriteLock(path) if rank.rank == 0 else None

    def claim() -> set[str]:
        lock.acquire()
        others = world_sizes(path) - {rank.world_size}
        if others:
            log.info("embed: keeping the finished videos of shards written with %s rank(s); the remaining videos "
                     "are shared among %d", "/".join(map(str, sorted(others))), rank.world_size)
        return committed_names(path, run.fingerprint) & {item.name for item in items}

    try:
        done = distributed.agreed(rank, claim)
        mine = distributed.share([item for item in items if item.name not in done], rank)

        def embed_share() -> tuple[dict, float]:
            with run.writer(shard_path(path, rank.rank, rank.world_size)) as writer:
                return run.embed_into(writer, [item for item in mine if item.name not in writer.done], len(done))

        counts, seconds = distributed.together(rank, embed_share)  # a rank that failed stops the others
        # The others return once the joined cache is in place, or with rank 0's refusal to join.
        distributed.agreed(rank, lambda: join(path, run.cfg.cache.join, locked=True))
    finally:
        if lock:
            lock.release()
    return done, counts, seconds


def embed_and_commit(cfg: Config, model, device, amp_dtype, writer: FeatureCacheWriter, todo: list[VideoItem],
                     pool: DecodePool | None = None) -> dict:
    """Decode, batch, forward and commit ``todo``; return what was embedded, what failed and where time went.

    ``pool``: decode workers started ahead (closed when done); without one, embed.workers says how to decode."""
    counts = {"embedded": 0, "frames": 0, "failed": [], "timing": dict.fromkeys(TIMING_KEYS, 0.0)}
    videos = [_Video(item) for item in todo]
    bar = tqdm(total=len(todo), desc="embed", unit="video", disable=None)
    started = time.perf_counter()
    flip = cfg.embed.flip

    def settle(video: _Video) -> None:
        """Commit (or record the failure of) a video once every frame it sent has come back."""
        if video.expected is None or video.received < video.expected:
            return
        write_started = time.perf_counter()
        if video.reason:
            writer.add_failure(video.item.name, video.reason)
            counts["failed"].append(video.item.name)
            log.warning(f"failed: {video.item.name}: {video.reason}")
        else:
            writer.add(video.item.name, video.item.label, np.concatenate(video.features),
                       np.concatenate(video.flip_features) if flip else None, header_frames=video.header_frames)
            counts["embedded"] += 1
            counts["frames"] += video.received
            bar.set_postfix_str(f"{counts['frames'] / (time.perf_counter() - started):.0f} frames/s", refresh=False)
        video.features, video.flip_features = [], []
        counts["timing"]["write"] += time.perf_counter() - write_started
        bar.update(1)

    def on_end(piece: Piece) -> None:
        video = videos[piece.index]
        video.expected, video.reason, video.header_frames = video.packed, piece.reason, piece.header_frames
        settle(video)

    def deliver(batch: feed.Batch, outputs: list[np.ndarray]) -> None:
        row = 0
        for index, rows in batch.owners:
            video = videos[index]
            for features in outputs:
                feed.check_storable(features[row:row + rows], cfg.embed.dtype, cfg.embed.backbone, video.item.name)
            video.features.append(outputs[0][row:row + rows])
            if flip:
                video.flip_features.append(outputs[1][row:row + rows])
            video.received += rows
            row += rows
            settle(video)

    def counted(stream):
        for piece in stream:
            if not piece.end:
                videos[piece.index].packed += len(piece.frames)
            yield piece

    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    workers = resolve_workers(cfg.embed.workers, local)
    resize = frame_resize(cfg.embed)
    stream = pieces(decode_jobs(cfg, todo), resize, cfg.embed.batch_size, workers, pool)
    pin = device.type == "cuda"
    with bar, contextlib.closing(stream):  # closing: an error or Ctrl-C stops the decode workers at once
        batches = feed.batches(counted(stream), cfg.embed.batch_size, cfg.embed.img_dim, pin, on_end,
                               counts["timing"])
        feed.run(feed.Forward(model, device, amp_dtype, flip, resize), batches, deliver, counts["timing"])
    return counts


def _summary(cfg: Config, items, embedded: int, skipped: int, frames: int, failures: dict, started: float,
             embed_seconds: float, timing: dict | None = None) -> dict:
    path = Path(cfg.cache.path)
    seconds = time.perf_counter() - started
    summary = {"videos": len(items), "embedded": embedded, "skipped": skipped, "failed": len(failures),
               "frames": frames, "seconds": round(seconds, 2),
               "frames_per_second": round(frames / embed_seconds, 1) if embed_seconds > 0 else 0.0,
               "cache": str(path), "cache_bytes": path.stat().st_size if path.exists() else 0,
               "timing": {key: round(value, 3) for key, value in (timing or {}).items()}}
    rank = distributed.current()
    if embedded or failures:
        log.info(f"embed{f' ({rank})' if rank.launched else ''}: {embedded} videos embedded ({frames} frames, "
                 f"{summary['frames_per_second']:.0f} frames/s), {skipped} skipped, {len(failures)} failed in "
                 f"{seconds:.1f}s; {path} is {summary['cache_bytes'] / 2**20:.1f} MiB")
    for name, reason in sorted(failures.items()):
        log.info(f"  failed: {name}: {reason}")
    if failures:
        log.info(f"embed: failed videos are recorded in the cache (`actrec info {path}`) and retried on the next "
                 f"run")
    return summary
