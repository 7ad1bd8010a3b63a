"""Stage one: every frame of every video -> frozen backbone -> the HDF5 feature cache.

Decode threads run ahead of the forward pass (OpenCV and torch's resize release the
GIL), handing over uint8 frames already resized to ``img_dim``; the main thread packs
them into batches that span video boundaries, runs the backbone and commits each
video as soon as its last frame is through. Videos are processed in the dataset's
sorted order and every forward pass has the same batch shape, so a resumed run
writes exactly the features an uninterrupted one would.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data.datasets import VideoItem, embed_items, frames_dir
from pipeline.data.frames import check_frames_manifest
from pipeline.data.video import DecodeError, iter_video_frames, read_frames_dir, typical_fps
from pipeline.device import autocast_dtype, dtype_name, resolve_device, set_threads
from pipeline.errors import ActrecError
from pipeline.features.backbone import forward, frame_resize, load_backbone, resized_chunks
from pipeline.features.cache import FeatureCache
from pipeline.features.cache_writer import FeatureCacheWriter
from pipeline.features.fingerprint import embed_fingerprint

log = logging.getLogger(__name__)


@dataclass
class _Decoded:
    """One video's resized frames on their way through the batches, and the features gathered so far."""
    item: VideoItem
    frames: torch.Tensor | None = None  # uint8 [T, 3, img_dim, img_dim]; None when decoding failed or batched
    reason: str = ""
    length: int = 0
    features: list = field(default_factory=list)
    flip_features: list = field(default_factory=list)
    received: int = 0


def decode_resized(cfg, item: VideoItem) -> _Decoded:
    """Decode one video (or its frames folder) and resize its frames; a decode failure becomes ``reason``."""
    try:
        frames = (read_frames_dir(frames_dir(cfg, item)) if cfg.embed.source == "frames"
                  else iter_video_frames(item.path))
        parts = list(resized_chunks(frames, frame_resize(cfg.embed), cfg.embed.batch_size))
    except DecodeError as exc:
        return _Decoded(item, reason=str(exc))
    frames = torch.cat(parts)
    return _Decoded(item, frames, length=len(frames))


def _decoded_in_order(cfg, items: list[VideoItem]):
    """Decoded videos in the order of ``items``, with up to ``2 * workers`` decoding ahead in threads."""
    if cfg.embed.workers == 0:
        yield from (decode_resized(cfg, item) for item in items)
        return
    with ThreadPoolExecutor(cfg.embed.workers, thread_name_prefix="decode") as pool:
        ahead = deque()
        try:
            for item in items:
                ahead.append(pool.submit(decode_resized, cfg, item))
                if len(ahead) > 2 * cfg.embed.workers:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:
            for future in ahead:
                future.cancel()


def _batches(videos, batch_size: int, on_failure):
    """(frames ``[batch_size, 3, h, w]``, [(video, rows)]) packed across video boundaries.

    The last batch is padded with zero frames: every forward pass has one shape, so a frame's features do not
    depend on where a (resumed) run started.
    """
    parts, owners, filled = [], [], 0
    for video in videos:
        if video.reason:
            on_failure(video)
            continue
        frames, video.frames, start = video.frames, None, 0  # the batches keep what they still need
        while start < len(frames):
            take = min(batch_size - filled, len(frames) - start)
            parts.append(frames[start:start + take])
            owners.append((video, take))
            filled, start = filled + take, start + take
            if filled == batch_size:
                yield torch.cat(parts), owners
                parts, owners, filled = [], [], 0
    if filled:
        padding = torch.zeros((batch_size - filled, *parts[0].shape[1:]), dtype=parts[0].dtype)
        yield torch.cat(parts + [padding]), owners


def _all_done(path: Path, fingerprint: dict, class_names: list[str], items: list[VideoItem]) -> bool:
    """True when an existing cache (with matching settings) already holds every item."""
    if not path.exists():
        return False
    cache = FeatureCache(path, expected_fingerprint=fingerprint)
    return cache.class_names == class_names and {item.name for item in items} <= set(cache.names)


def embed(cfg) -> dict:
    """Embed every frame of every video of ``embed_items(cfg)`` into cfg.cache.path; return the counts."""
    started = time.perf_counter()
    set_threads(cfg.embed.threads)
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

    device = resolve_device(cfg.embed.device)
    amp_dtype = autocast_dtype(device, cfg.embed.precision)
    model = load_backbone(cfg.embed.backbone, cfg.embed.weights, device, cfg.embed.img_dim)
    fingerprint["forward_dtype"] = dtype_name(amp_dtype)
    with FeatureCacheWriter(path, fingerprint, class_names, model.feature_dim, flip=cfg.embed.flip,
                            dtype=cfg.embed.dtype, config=cfg.to_dict(),
                            fps=typical_fps([item.path for item in items])) as writer:
        todo = [item for item in items if item.name not in writer.done]
        retried = sum(item.name in writer.failures for item in todo)
        log.info(f"embed: {len(items)} videos, {len(items) - len(todo)} already in the cache, {len(todo)} to do"
                 + (f" ({retried} failed before, retried)" if retried else "")
                 + f" -> {path} [{cfg.embed.backbone}, {device}"
                 + (f", {str(amp_dtype).replace('torch.', '')}" if amp_dtype else "") + "]")
        embed_started = time.perf_counter()
        counts = embed_and_commit(cfg, model, device, amp_dtype, writer, todo)
        embed_seconds = time.perf_counter() - embed_started
        failures = {name: writer.failures[name] for name in counts["failed"]}
    return _summary(cfg, items, embedded=counts["embedded"], skipped=len(items) - len(todo),
                    frames=counts["frames"], failures=failures, started=started, embed_seconds=embed_seconds)


def embed_and_commit(cfg, model, device, amp_dtype, writer: FeatureCacheWriter, todo: list[VideoItem]) -> dict:
    """Decode, batch, forward and commit ``todo``; return what was embedded and what failed."""
    counts = {"embedded": 0, "frames": 0, "failed": []}
    bar = tqdm(total=len(todo), desc="embed", unit="video")

    def on_failure(video: _Decoded) -> None:
        writer.add_failure(video.item.name, video.reason)
        counts["failed"].append(video.item.name)
        log.warning(f"failed: {video.item.name}: {video.reason}")
        bar.update(1)

    started = time.perf_counter()
    with bar:
        for batch, owners in _batches(_decoded_in_order(cfg, todo), cfg.embed.batch_size, on_failure):
            outputs = forward(model, batch, device, amp_dtype).numpy()
            flipped = forward(model, batch, device, amp_dtype, flip=True).numpy() if cfg.embed.flip else None
            row = 0
            for video, rows in owners:
                video.features.append(outputs[row:row + rows])
                if flipped is not None:
                    video.flip_features.append(flipped[row:row + rows])
                video.received += rows
                row += rows
                if video.received == video.length:
                    writer.add(video.item.name, video.item.label, np.concatenate(video.features),
                               np.concatenate(video.flip_features) if flipped is not None else None)
                    counts["embedded"] += 1
                    counts["frames"] += video.received
                    bar.update(1)
                    fps = counts["frames"] / (time.perf_counter() - started)
                    bar.set_postfix_str(f"{fps:.0f} frames/s", refresh=False)
    return counts


def _summary(cfg, items, embedded: int, skipped: int, frames: int, failures: dict, started: float,
             embed_seconds: float) -> dict:
    path = Path(cfg.cache.path)
    seconds = time.perf_counter() - started
    summary = {"videos": len(items), "embedded": embedded, "skipped": skipped, "failed": len(failures),
               "frames": frames, "seconds": round(seconds, 2),
               "frames_per_second": round(frames / embed_seconds, 1) if embed_seconds > 0 else 0.0,
               "cache": str(path), "cache_bytes": path.stat().st_size if path.exists() else 0}
    if embedded or failures:
        log.info(f"embed: {embedded} videos embedded ({frames} frames, {summary['frames_per_second']:.0f} "
                 f"frames/s), {skipped} skipped, {len(failures)} failed in {seconds:.1f}s; {path} is "
                 f"{summary['cache_bytes'] / 2**20:.1f} MiB")
    for name, reason in sorted(failures.items()):
        log.info(f"  failed: {name}: {reason}")
    if failures:
        log.info(f"embed: failed videos are recorded in the cache (`actrec info {path}`) and retried on the next "
                 f"run")
    return summary
