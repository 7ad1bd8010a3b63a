"""Row 5a: embed time and peak memory for N and 4N videos (time should grow ~x4, memory stay ~x1).

Each embed runs in a fresh subprocess so that its peak resident memory is its own, not the bench's.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import Sizes, row, synthetic_dataset
from pipeline.config import Config, config_from_dict
from pipeline.errors import ActrecError

log = logging.getLogger(__name__)


def _rss_mib() -> float:
    """Resident memory of this process now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def embed_child(config_json: str, out_path: str) -> None:
    """Entry point of the scaling subprocess: embed while sampling the resident memory, write JSON to ``out_path``."""
    from pipeline.embed.run import embed

    cfg = config_from_dict(json.loads(config_json), source="bench")
    baseline, samples, running = _rss_mib(), [], True

    def sample():
        while running:
            samples.append(_rss_mib())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    summary = embed(cfg)
    running = False
    sampler.join()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(out_path).write_text(json.dumps({
        "seconds": summary["seconds"], "frames": summary["frames"], "videos": summary["videos"],
        "rss_before_mib": baseline, "rss_peak_mib": max(samples + [baseline]), "maxrss_mib": peak_kib / 1024}))


def embed_in_subprocess(cfg: Config) -> dict:
    """Run ``embed`` of ``cfg`` in a fresh Python process; its time, frames, videos and memory samples."""
    code = "import sys; from benchmarks.scaling import embed_child; embed_child(sys.argv[1], sys.argv[2])"
    with tempfile.TemporaryDirectory(prefix="actrec-bench-child-") as tmp:
        out = Path(tmp) / "result.json"
        done = subprocess.run([sys.executable, "-c", code, json.dumps(cfg.to_dict()), str(out)],
                              capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            last = (done.stderr.strip().splitlines() or ["no error output"])[-1]
            raise ActrecError(f"bench: the scaling embed of {cfg.data.videos} failed: {last}")
        return json.loads(out.read_text())


def bench_scaling(cfg: Config, sizes: Sizes, work: Path, command: str) -> dict:
    """Row 5a: embed N = 2 x 8 x ``sizes.scaling_clips`` videos, then 4N, each in its own process."""
    log.info("bench row 5a: embed scaling N -> 4N videos")
    runs = {}
    for factor in (1, 4):
        dataset = synthetic_dataset(cfg, sizes, work / f"x{factor}", groups=8, clips=sizes.scaling_clips * factor)
        runs[factor] = embed_in_subprocess(dataset)
    # Per-frame time and memory growth during the embed: model loading and imports are the same for both.
    time_ratio = runs[4]["seconds"] / runs[1]["seconds"]
    per_frame = time_ratio * runs[1]["frames"] / runs[4]["frames"]
    growth = {k: r["rss_peak_mib"] - r["rss_before_mib"] for k, r in runs.items()}
    memory_ratio = runs[4]["rss_peak_mib"] / runs[1]["rss_peak_mib"]
    return row("5a", f"embed scaling: {runs[1]['videos']} -> {runs[4]['videos']} videos",
               f"time x{time_ratio:.2f} (per frame x{per_frame:.2f}); peak memory {runs[1]['rss_peak_mib']:.0f} -> "
               f"{runs[4]['rss_peak_mib']:.0f} MiB (growth during embed {growth[1]:.0f} -> {growth[4]:.0f} MiB)",
               memory_ratio, "time ~x4, memory ~x1", 0.8 <= per_frame <= 1.25 and memory_ratio <= 1.1, command,
               runs={str(k): v for k, v in runs.items()}, time_ratio=round(time_ratio, 3),
               per_frame_time_ratio=round(per_frame, 3))
