"""Row 7: clip reads from a cache on disk, by HDF5 chunk size and chunk-cache size (which layout stage two wants).

A UCF-101-shaped cache (2048-d float16, videos of about 186 frames) is written once per chunk size; then
the same seeded training clips (segment sampling, L = 40) are read through ``TrainClips`` in disk mode with
HDF5's default 1 MiB chunk cache and with a larger one. The file sits in the page cache after writing, so
this measures what the chunk layout costs the reader (lookups, partial-chunk copies), not the drive.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from benchmarks.common import Sizes, row

log = logging.getLogger(__name__)

CHUNK_ROWS = (256, 64, 32)                 # 256: the writer's default for 2048-d float16 (1 MiB chunks)
CHUNK_CACHES = (None, 64 * 2**20)          # HDF5's default (1 MiB) and 64 MiB
DIM, LENGTH, MEAN_FRAMES = 2048, 40, 186


def write_cache(path: Path, videos: int, chunk_rows: int) -> None:
    """``videos`` videos of 120-250 frames (UCF-101's middle range) of random 2048-d features."""
    import numpy as np

    from pipeline.cache.writer import FeatureCacheWriter

    rng = np.random.default_rng(0)
    with FeatureCacheWriter(path, {"bench": "chunks"}, ["A", "B"], DIM, chunk_rows=chunk_rows) as writer:
        for i in range(videos):
            frames = int(rng.integers(120, 253))
            writer.add(f"A/v_A_g{i:04d}_c01", i % 2, rng.standard_normal((frames, DIM), dtype=np.float32))


def clips_per_second(path: Path, clips: int, chunk_cache: int | None) -> float:
    """Seeded training clips read per second through ``TrainClips`` with the features left on disk."""
    from pipeline.cache.reader import FeatureCache
    from pipeline.sequence.datasets import TrainClips

    cache = FeatureCache(path, chunk_cache_bytes=chunk_cache)
    rows = list(range(len(cache)))
    data = TrainClips(cache, rows, [int(cache.labels[r]) for r in rows], LENGTH, seed=0, flip=False)
    data[0]  # open the file outside the timing
    started = time.perf_counter()
    for k in range(clips):
        data.set_epoch(k // len(rows))
        data[k % len(rows)]
    seconds = time.perf_counter() - started
    cache.close()
    return clips / seconds


def bench_chunks(sizes: Sizes, work: Path, command: str) -> dict:
    """Row 7: clips/s for each chunk size x chunk-cache size (median of alternating rounds); the best against the
    current default."""
    import numpy as np

    videos, clips, rounds = (8, 40, 1) if sizes.cache_videos < 16 else (200, 1000, 5)
    log.info("bench row 7: clip reads by HDF5 chunk size (%d videos, %d clips x %d rounds each way)", videos, clips,
             rounds)
    for chunk_rows in CHUNK_ROWS:
        write_cache(work / f"chunks{chunk_rows}.h5", videos, chunk_rows)
    samples = {(r, c): [] for r in CHUNK_ROWS for c in CHUNK_CACHES}
    for _ in range(rounds):  # alternating, so a busy moment of the machine hits every layout alike
        for chunk_rows, chunk_cache in samples:
            samples[(chunk_rows, chunk_cache)].append(
                clips_per_second(work / f"chunks{chunk_rows}.h5", clips, chunk_cache))
    rates = {key: float(np.median(values)) for key, values in samples.items()}
    default = rates[(CHUNK_ROWS[0], None)]
    best = max(rates, key=rates.get)
    text = ", ".join(f"{rows} rows/{'64 MiB' if cache else '1 MiB'}: {rate:.0f}"
                     for (rows, cache), rate in rates.items())
    return row("7", "clip reads on disk (clips/s) by chunk rows / chunk cache", text, rates[best] / default,
               "report", None, command, clips_per_second={f"{r}/{c or 'default'}": v for (r, c), v in rates.items()},
               videos=videos, clips=clips, best=f"{best[0]} rows, chunk cache {best[1] or 'default'}")
