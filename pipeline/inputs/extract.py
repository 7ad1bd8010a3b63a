"""The extract stage: every video -> a folder of JPEG frames (parallel across videos, resumable).

Each video is decoded into a temp folder beside its target and renamed into place
once all its frames are written, so a finished folder is always complete: an
interrupted run resumes by skipping finished videos, and leftover temp folders are
removed on the next run. Videos that cannot be decoded are reported and listed in
``data.frames/failures.json``; the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
from joblib import Parallel, delayed
from tqdm import tqdm

from pipeline.errors import ActrecError
from pipeline.fileio import incomplete_write, reporting_write_errors, write_json
from pipeline.inputs.formats import embed_items
from pipeline.inputs.splits import frames_dir
from pipeline.inputs.video import FRAME_PATTERN, DecodeError, iter_video_frames

if TYPE_CHECKING:
    from pipeline.config import Config

log = logging.getLogger(__name__)

FAILURES = "failures.json"
MANIFEST = "extract.json"
_PARTIAL = ".partial"


def frames_manifest(cfg: Config) -> dict:
    """What the frames under data.frames are made from: the dataset's split files and the JPEG quality."""
    from pipeline.inputs.formats import split_files_signature

    return {"split_files": split_files_signature(cfg), "jpeg_quality": cfg.extract.jpeg_quality}


def check_frames_manifest(cfg: Config) -> None:
    """Refuse frames extracted from another dataset version or with another quality: they would be reused."""
    root = Path(cfg.data.frames)
    path = root / MANIFEST
    if not path.is_file():
        if root.is_dir() and any(p.is_dir() for p in root.iterdir()):
            raise ActrecError(f"{root} holds frames but no {MANIFEST} saying what they were extracted from; "
                              f"delete {root} and run `actrec extract` again")
        return
    recorded, expected = json.loads(path.read_text()), frames_manifest(cfg)
    changed = [f"{key}: {recorded.get(key)!r} there, {value!r} now" for key, value in expected.items()
               if recorded.get(key) != value]
    if changed:
        raise ActrecError(f"the frames in {cfg.data.frames} were extracted from other videos or settings "
                          f"({'; '.join(changed)}); delete {cfg.data.frames} and run `actrec extract` again")


def extract_frames(cfg: Config) -> dict:
    """Write the frames of every video of ``embed_items(cfg)`` as JPEGs under data.frames; return the counts."""
    started = time.perf_counter()
    root = Path(cfg.data.frames)
    _, items = embed_items(cfg)
    check_frames_manifest(cfg)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / MANIFEST, frames_manifest(cfg))
    for stale in root.glob(f"*/.*{_PARTIAL}"):
        shutil.rmtree(stale)
    todo = [item for item in items if not frames_dir(cfg, item).is_dir()]
    log.info(f"extract: {len(items)} videos, {len(items) - len(todo)} already extracted, {len(todo)} to do "
             f"-> {root}")
    jobs = (delayed(extract_video)(item.path, frames_dir(cfg, item), cfg.extract.jpeg_quality) for item in todo)
    results = Parallel(n_jobs=cfg.extract.workers, return_as="generator")(jobs)
    frames, failures = 0, []
    # Results first in zip: the generator must run to its end, or joblib reports cancelled tasks.
    for (count, reason), item in zip(tqdm(results, total=len(todo), desc="extract", unit="video"), todo):
        frames += count
        if reason is not None:
            failures.append({"name": item.name, "path": str(item.path), "reason": reason})
            log.warning(f"failed: {item.name}: {reason}")
    write_json(root / FAILURES, {"failures": failures})
    summary = {"videos": len(items), "extracted": len(todo) - len(failures), "skipped": len(items) - len(todo),
               "frames": frames, "failures": len(failures), "seconds": round(time.perf_counter() - started, 2)}
    log.info(f"extract: {summary['extracted']} videos extracted ({frames} frames), {summary['skipped']} skipped, "
             f"{summary['failures']} failed in {summary['seconds']:.1f}s"
             + (f"; failures listed in {root / FAILURES}" if failures else ""))
    return summary


def extract_video(path: str | Path, target: str | Path, jpeg_quality: int) -> tuple[int, str | None]:
    """Decode one video into ``target``/000001.jpg, ...; (frames written, None) or (0, why it failed)."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}{_PARTIAL}")
    shutil.rmtree(tmp, ignore_errors=True)
    with reporting_write_errors(target):
        tmp.mkdir(parents=True)
    count = 0
    try:
        for count, frame in enumerate(iter_video_frames(path), start=1):
            out = tmp / FRAME_PATTERN.format(count)
            if not cv2.imwrite(str(out), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]):
                raise incomplete_write(target, f"OpenCV could not write {out.name}")
    except DecodeError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return 0, str(exc)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with reporting_write_errors(target):
        os.replace(tmp, target)
    return count, None
