"""Row 4: disk per frame of the float16 2048-d feature cache against the extracted JPEG frames it replaces."""

from __future__ import annotations

import logging
from pathlib import Path

from benchmarks.common import UCF101_FRAMES, row
from pipeline.config import Config

log = logging.getLogger(__name__)


def bench_disk(cache_cfg: Config, jpeg_cfg: Config, command: str) -> dict:
    """Row 4: bytes per frame of ``cache_cfg``'s cache and of ``jpeg_cfg``'s extracted frames, scaled to UCF-101."""
    import numpy as np

    from pipeline.cache.reader import FeatureCache

    log.info("bench row 4: disk per frame")
    cache = FeatureCache(cache_cfg.cache.path)
    cache_bytes = Path(cache_cfg.cache.path).stat().st_size / int(np.sum(cache.lengths))
    jpegs = list(Path(jpeg_cfg.data.frames).rglob("*.jpg"))
    jpeg_bytes = sum(p.stat().st_size for p in jpegs) / len(jpegs)
    return row("4", "disk per frame: float16 2048-d cache vs extracted JPEG",
               f"{cache_bytes:.0f} B vs {jpeg_bytes:.0f} B; UCF-101: {cache_bytes * UCF101_FRAMES / 1e9:.1f} GB "
               f"vs {jpeg_bytes * UCF101_FRAMES / 1e9:.1f} GB (seed reports 26 GB)",
               cache_bytes / jpeg_bytes, "report", None, command, cache_bytes_per_frame=cache_bytes,
               jpeg_bytes_per_frame=jpeg_bytes, jpeg_frame_size=f"{jpeg_cfg.synth.width}x{jpeg_cfg.synth.height}",
               note="synthetic frames compress better than real UCF-101 frames (26 GB / 2.5 M = about 10 KB)")
