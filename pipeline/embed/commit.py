"""Stage one's work once the videos are known: decode, batch, forward and commit each video to the cache.

Worker processes decode and resize the videos (embed/workers.py), handing over uint8 chunks in
the dataset's sorted order; the main process packs them into batches that span video boundaries,
feeds the backbone (embed/feed.py) and commits each video as soon as its last frame is through.
Every forward pass has the same batch shape (the last batch is zero-padded). Under torchrun each rank
writes its share into its own shard and rank 0 joins them (embed/run.py says what makes that exact).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

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
from pipeline.embed.backbones import Backbone, backbone_of
from pipeline.embed.fingerprint import device_kind, embed_fingerprint
from pipeline.embed.workers import DecodePool, Piece, pieces, resolve_workers
from pipeline.inputs.splits import VideoItem, frames_dir
from pipeline.inputs.video import typical_fps

if TYPE_CHECKING:
    from pipeline.config import Config

log = logging.getLogger(__name__)

TIMING_KEYS = ("decode_wait", "pack", "submit", "wait", "write")


def embed_videos(cfg: Config, class_names: list[str], items: list[VideoItem], pool: DecodePool | None,
                 marks: dict) -> dict:
    """``items`` into cfg.cache.path (or this rank's shard), decoded by ``pool`` (None: in this process); the
    summary ``embed`` returns. Nothing is done when the cache already holds every item. ``marks``: when each
    step of the start-up was reached (``time.perf_counter``), from ``start``; the steps here are added."""
    marks["stage_imported"] = time.perf_counter()
    runtime = stage_runtime(cfg, "embed")
    set_threads(runtime.threads)
    path = Path(cfg.cache.path)
    backbone = backbone_of(cfg.embed)  # checked and its card read once; everything below uses this object
    fingerprint = embed_fingerprint(cfg, backbone)
    if _all_done(path, fingerprint, class_names, items):
        log.info(f"embed: all {len(items)} videos are already in {path}; nothing to do")
        return _summary(cfg, items, embedded=0, skipped=len(items), frames=0, failures={}, marks=marks,
                        embed_seconds=0.0)
    rank = distributed.current()
    device = distributed.rank_device(resolve_device(runtime.device, option=runtime_option(cfg, "embed", "device")),
                                     rank)
    distributed.init(rank, device)
    try:
        amp_dtype = autocast_dtype(device, runtime.precision)
        model = backbone.build(device)
        marks["backbone_built"] = time.perf_counter()
        fingerprint["forward_dtype"] = dtype_name(amp_dtype)
        fingerprint["device"] = device_kind(device)
        run = _Run(cfg, rank, backbone, model, device, amp_dtype, fingerprint, class_names,
                   typical_fps([item.path for item in items]), pool, marks)
        sharded = rank.launched or bool(shard_files(path))
        done, counts, seconds = (_embed_sharded if sharded else _embed_single)(run, items)
    finally:
        distributed.shutdown()
    return _summary(cfg, items, embedded=counts["embedded"], skipped=len(done), frames=counts["frames"],
                    failures=counts["failures"], marks=marks, embed_seconds=seconds, timing=counts["timing"])


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


@dataclass
class _Run:
    """What every rank's embedding needs besides the videos."""
    cfg: object
    rank: distributed.Rank
    backbone: Backbone
    model: torch.nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None
    fingerprint: dict
    class_names: list[str]
    fps: float | None  # the videos' typical frame rate, recorded in the cache
    pool: DecodePool | None = None  # decode workers already started (None: decode in this process)
    marks: dict = field(default_factory=dict)  # the start-up's steps (embed_videos)

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
        counts = embed_and_commit(self, writer, todo)
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


def embed_and_commit(run: _Run, writer: FeatureCacheWriter, todo: list[VideoItem]) -> dict:
    """Decode, batch, forward and commit ``todo``; return what was embedded, what failed and where time went.

    ``run.pool``: decode workers started ahead (closed when done); without one, embed.workers says how to decode."""
    cfg = run.cfg
    commits = _Commits(writer, [_Video(item) for item in todo], cfg.embed.flip, cfg.embed.dtype, cfg.embed.backbone,
                       run.marks)
    workers = resolve_workers(cfg.embed.workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    resize = run.backbone.preprocessing
    stream = pieces(decode_jobs(cfg, todo), resize, cfg.embed.batch_size, workers, run.pool)
    timing = commits.counts["timing"]
    with commits.bar, contextlib.closing(stream):  # closing: an error or Ctrl-C stops the decode workers at once
        batches = feed.batches(commits.counted(stream), cfg.embed.batch_size, cfg.embed.img_dim,
                               run.device.type == "cuda", commits.on_end, timing)
        feed.run(feed.Forward(run.model, run.device, run.amp_dtype, cfg.embed.flip, resize), batches,
                 commits.deliver, timing)
    return commits.counts


class _Commits:
    """The videos of one ``embed_and_commit`` on their way through the batches: frames counted as they are
    packed, features gathered as they come back, each video committed (or its failure recorded) once every frame
    it sent is through."""

    def __init__(self, writer: FeatureCacheWriter, videos: list[_Video], flip: bool, dtype: str, backbone: str,
                 marks: dict):
        self.writer, self.videos, self.flip, self.dtype, self.backbone = writer, videos, flip, dtype, backbone
        self.marks = marks  # gets 'first_features': when the first batch's features came back
        self.counts = {"embedded": 0, "frames": 0, "failed": [], "timing": dict.fromkeys(TIMING_KEYS, 0.0)}
        self.bar = tqdm(total=len(videos), desc="embed", unit="video", disable=None)
        self.started = time.perf_counter()

    def counted(self, stream: Iterator[Piece]) -> Iterator[Piece]:
        for piece in stream:
            if not piece.end:
                self.videos[piece.index].packed += len(piece.frames)
            yield piece

    def on_end(self, piece: Piece) -> None:
        video = self.videos[piece.index]
        video.expected, video.reason, video.header_frames = video.packed, piece.reason, piece.header_frames
        self.settle(video)

    def deliver(self, batch: feed.Batch, outputs: list[np.ndarray]) -> None:
        self.marks.setdefault("first_features", time.perf_counter())
        row = 0
        for index, rows in batch.owners:
            video = self.videos[index]
            for features in outputs:
                feed.check_storable(features[row:row + rows], self.dtype, self.backbone, video.item.name)
            video.features.append(outputs[0][row:row + rows])
            if self.flip:
                video.flip_features.append(outputs[1][row:row + rows])
            video.received += rows
            row += rows
            self.settle(video)

    def settle(self, video: _Video) -> None:
        """Commit (or record the failure of) a video once every frame it sent has come back."""
        if video.expected is None or video.received < video.expected:
            return
        counts, write_started = self.counts, time.perf_counter()
        if video.reason:
            self.writer.add_failure(video.item.name, video.reason)
            counts["failed"].append(video.item.name)
            log.warning(f"failed: {video.item.name}: {video.reason}")
        else:
            self.writer.add(video.item.name, video.item.label, np.concatenate(video.features),
                            np.concatenate(video.flip_features) if self.flip else None,
                            header_frames=video.header_frames)
            counts["embedded"] += 1
            counts["frames"] += video.received
            rate = counts["frames"] / (time.perf_counter() - self.started)
            self.bar.set_postfix_str(f"{rate:.0f} frames/s", refresh=False)
        video.features, video.flip_features = [], []
        counts["timing"]["write"] += time.perf_counter() - write_started
        self.bar.update(1)


def _summary(cfg: Config, items, embedded: int, skipped: int, frames: int, failures: dict, marks: dict,
             embed_seconds: float, timing: dict | None = None) -> dict:
    path = Path(cfg.cache.path)
    seconds = time.perf_counter() - marks["start"]
    start_up = {step: round(at - marks["start"], 3) for step, at in marks.items() if step != "start"}
    start_up["finished"] = round(seconds, 3)
    summary = {"videos": len(items), "embedded": embedded, "skipped": skipped, "failed": len(failures),
               "frames": frames, "seconds": round(seconds, 2),
               "frames_per_second": round(frames / embed_seconds, 1) if embed_seconds > 0 else 0.0,
               "cache": str(path), "cache_bytes": path.stat().st_size if path.exists() else 0,
               "timing": {key: round(value, 3) for key, value in (timing or {}).items()}, "start_up": start_up}
    log.debug(f"embed: start-up, the stage began at Unix time {time.time() - seconds:.3f}; seconds from there: "
              + ", ".join(f"{step} {at}" for step, at in start_up.items()))
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
