"""``actrec export``: a feature cache written out per video in another tool's layout (``layouts.py``).

The features go out in the cache's own dtype, bit for bit, so ``actrec import`` of the folder gives the same
cache features. The folder appears complete or not at all: it is written under a temporary name and renamed.
Flip features (``embed.flip``) stay in the cache.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.cache.reader import FeatureCache
from pipeline.errors import ActrecError
from pipeline.fileio import reporting_write_errors
from pipeline.interchange.layouts import CLASSES_FILE, LAYOUTS, VIDEO_LIST, default_key, files_for, save_array

log = logging.getLogger(__name__)


def export_cache(cache_path: str | Path, out: str | Path, layout: str = "video_features",
                 key: str | None = None) -> dict:
    """Write every video of the cache at ``cache_path`` into the new folder ``out`` in ``layout``; ``key``: the
    video_features feature type (default from the cache's backbone). Returns what was written."""
    if layout not in LAYOUTS:
        raise ActrecError(f"--layout {layout}: choose one of {', '.join(LAYOUTS)}")
    cache = FeatureCache(cache_path)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ActrecError(f"{out} exists; give a new folder (export writes a folder of its own)")
    key = key or default_key(str(cache.fingerprint.get("backbone", "features")))
    planned = _planned_files(cache, out, layout, key)
    tmp = out.with_name(f".{out.name}.exporting")
    shutil.rmtree(tmp, ignore_errors=True)  # what an interrupted export left
    with reporting_write_errors(out):
        _write(cache, tmp, out, planned, layout)
        if out.exists():
            out.rmdir()  # the empty folder the user named
        os.replace(tmp, out)
    log.info("exported %d videos of %s to %s (%s layout, key %s)", len(cache), cache.path, out, layout, key)
    return {"videos": len(cache), "folder": str(out), "layout": layout, "key": key, "fps": cache.fps}


def _planned_files(cache: FeatureCache, out: Path, layout: str, key: str) -> list:
    """Each video's files; two videos that would share a file (video_features names files by stem) are refused."""
    planned, seen = [], {}
    for name in cache.names:
        files = files_for(layout, out, name, key)
        if files.features in seen:
            raise ActrecError(f"{seen[files.features]} and {name} would both be written to {files.features.name} "
                              f"(video_features names files by the video's stem); use --layout mmaction2, which "
                              f"keeps class folders")
        seen[files.features] = name
        planned.append(files)
    return planned


def _write(cache: FeatureCache, tmp: Path, out: Path, planned: list, layout: str) -> None:
    tmp.mkdir(parents=True)
    try:
        (tmp / CLASSES_FILE).write_text("".join(f"{c}\n" for c in cache.class_names))
        if layout == "mmaction2":
            (tmp / VIDEO_LIST).write_text("".join(f"{name} {int(label)}\n"
                                                  for name, label in zip(cache.names, cache.labels)))
        elif not cache.fps:
            log.warning("%s records no frame rate: the _fps.npy and _timestamps_ms.npy files are left out",
                        cache.path)
        for i, files in enumerate(tqdm(planned, desc="export", unit="video")):
            rows = cache.stored_rows(i)
            target = tmp / files.features.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            save_array(target, rows)
            if layout == "video_features" and cache.fps:
                save_array(tmp / files.fps.name, np.array(cache.fps))
                save_array(tmp / files.timestamps.name, np.arange(len(rows)) * (1000.0 / cache.fps))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        cache.close()
