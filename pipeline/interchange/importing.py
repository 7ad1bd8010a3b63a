"""``actrec import``: a feature cache built from per-video arrays another tool made (``layouts.py``), under the
dataset's split lists, so that stage two trains on it like on any cache.

Every file is read and checked before anything is written: a file for a video the lists do not name, two files
for one video, a listed video without a file, a width that differs, NaN or inf, a bad fps or timestamps: one line
each. The cache's fingerprint records that its features were imported, from where, in which layout and what made
them (``--made-by``: the user's word, e.g. "video_features i3d, Kinetics-400 weights"), with a hash of every array;
it holds no backbone, so ``actrec predict`` refuses its runs (it would have to make the same features itself).
The cache is written under a temporary name and renamed when complete; an interrupted import resumes there.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from pipeline.cache.writer import FeatureCacheWriter
from pipeline.errors import ActrecError
from pipeline.fileio import check_output
from pipeline.inputs.formats import embed_items, split_files_signature
from pipeline.interchange.layouts import (
    CLASSES_FILE,
    LAYOUTS,
    META_KEYS,
    VideoFiles,
    files_for,
    found_files,
    load_array,
    video_key,
)

if TYPE_CHECKING:
    from pipeline.config import Config

log = logging.getLogger(__name__)

STORED_DTYPES = ("float16", "float32")  # what a cache holds; other floats are stored as float32


@dataclass
class _Checked:
    """One video's checked arrays: where they are, their shape and dtype, rows per second, a hash of the rows."""

    name: str
    label: int
    files: VideoFiles
    rows: int
    dim: int
    dtype: str
    rate: float | None
    sha256: str


def import_features(cfg: Config, folder: str | Path, layout: str, made_by: str, key: str | None = None) -> dict:
    """Build the cache at ``cfg.cache.path`` from ``folder`` (``layout``; ``key``: video_features' feature type,
    found from the file names when there is one). Returns what was written."""
    folder, target = Path(folder), Path(cfg.cache.path)
    _check_request(folder, target, layout, made_by)
    class_names, items = embed_items(cfg, check_videos=False)
    _check_classes(folder, class_names)
    key = key or (None if layout == "mmaction2" else _found_key(folder))
    checked = [_check_video(item.name, item.label, files)
               for item, files in tqdm(_matched(folder, layout, key, items), desc="import: check", unit="video")]
    dim, dtype = _common_layout(checked)
    rates = [c.rate for c in checked if c.rate]
    fingerprint = {"name": cfg.data.name, "split_files": split_files_signature(cfg), "frames": "imported",
                   "imported": {"layout": layout, "key": key, "made_by": made_by, "folder": str(folder.resolve()),
                                "files": len(checked), "sha256": _digest(checked)}}
    config = {k: v for k, v in cfg.to_dict().items() if k not in ("embed", "extract")}  # no backbone made them
    _write(target, checked, fingerprint, class_names, dim, dtype, config, float(np.median(rates)) if rates else None)
    log.info("imported %d videos (%d frames, %d-d %s) from %s into %s", len(checked), sum(c.rows for c in checked),
             dim, dtype, folder, target)
    return {"videos": len(checked), "frames": sum(c.rows for c in checked), "dim": dim, "dtype": dtype,
            "cache": str(target)}


def _check_request(folder: Path, target: Path, layout: str, made_by: str) -> None:
    if layout not in LAYOUTS:
        raise ActrecError(f"--layout {layout}: choose one of {', '.join(LAYOUTS)}")
    if not folder.is_dir():
        raise ActrecError(f"{folder}: no such folder of features")
    if not made_by.strip():
        raise ActrecError("--made-by: say what made the features (tool, model, weights), e.g. --made-by "
                          "\"video_features i3d, Kinetics-400\"; the cache's fingerprint records it")
    if target.exists():
        raise ActrecError(f"cache.path {target} exists; import builds a new cache: set cache.path to a new file")
    check_output(target, "cache.path", suffixes=(".h5", ".hdf5"))


def _check_classes(folder: Path, class_names: list[str]) -> None:
    """A ``classes.txt`` beside the features must list the split lists' classes in their order (labels are
    indices)."""
    listed = folder / CLASSES_FILE
    if listed.is_file():
        classes = listed.read_text().split()
        if classes != class_names:
            raise ActrecError(f"{listed} lists {len(classes)} classes ({', '.join(classes[:3])}, ...) but the split "
                              f"lists give {len(class_names)} ({', '.join(class_names[:3])}, ...) in another order; "
                              f"the labels would not match")


def _found_key(folder: Path) -> str:
    """video_features' feature type: the one ``STEM_KEY.npy`` suffix that is not fps or timestamps."""
    keys = {p.stem.rsplit("_", 1)[-1] for p in folder.rglob("*_*.npy")
            if not p.stem.endswith(tuple(f"_{meta}" for meta in META_KEYS))}
    if len(keys) != 1:
        found = ", ".join(sorted(keys)) or "none"
        raise ActrecError(f"{folder}: give --key, the feature type of the STEM_KEY.npy files (found: {found})")
    return keys.pop()


def _matched(folder: Path, layout: str, key: str | None, items: list) -> list[tuple]:
    """Each listed video with its files; files the lists do not name and listed videos without one are refused."""
    found = found_files(layout, folder, key)
    listed = {video_key(layout, item.name): item for item in items}
    if len(listed) < len(items):
        raise ActrecError("two videos of the split lists share a file name, and video_features names files by it; "
                          "use --layout mmaction2 (names with class folders)")
    stray = sorted(set(found) - set(listed))
    if stray:
        raise ActrecError(f"{found[stray[0]].features} names no video of the split lists"
                          f"{f' (nor do {len(stray) - 1} more)' if len(stray) > 1 else ''}; remove it or point "
                          f"data.splits at the lists it belongs to")
    missing = [name for name in listed if name not in found]
    if missing:
        raise ActrecError(f"{len(missing)} videos of the split lists have no features in {folder} (first: "
                          f"{listed[missing[0]].name}, expected "
                          f"{files_for(layout, folder, listed[missing[0]].name, key or 'KEY').features.name})")
    return [(item, found[video_key(layout, item.name)]) for item in items]


def _check_video(name: str, label: int, files: VideoFiles) -> _Checked:
    """Read one video's arrays and check them: ``[T, D]`` finite floats, and a rate from fps or timestamps."""
    rows = load_array(files.features)
    if rows.ndim == 1:
        rows = rows[None, :]  # one feature for the whole video (a clip-level extraction without long-video mode)
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] == 0:
        raise ActrecError(f"{files.features}: features must be [frames, width], got shape {rows.shape}")
    if not np.issubdtype(rows.dtype, np.floating):
        raise ActrecError(f"{files.features} holds {rows.dtype} values; features are floating point")
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        raise ActrecError(f"{files.features}: row {int(np.argmin(finite))} holds NaN or inf; fix or re-extract it")
    return _Checked(name, label, files, rows.shape[0], rows.shape[1], rows.dtype.name, _rate(files, rows.shape[0]),
                    hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest())


def _rate(files: VideoFiles, rows: int) -> float | None:
    """Rows per second: the fps file's value, else the timestamps' median spacing; None when neither exists."""
    if files.fps is not None and files.fps.is_file():
        fps = load_array(files.fps)
        if fps.size != 1 or not np.isfinite(fps).all() or float(fps.reshape(-1)[0]) <= 0:
            raise ActrecError(f"{files.fps}: fps must be one positive number, got {fps.reshape(-1)[:3]}")
        return float(fps.reshape(-1)[0])
    if files.timestamps is not None and files.timestamps.is_file():
        times = load_array(files.timestamps).reshape(-1).astype(np.float64)
        if len(times) != rows or not np.isfinite(times).all() or (rows > 1 and np.any(np.diff(times) <= 0)):
            raise ActrecError(f"{files.timestamps}: timestamps must be {rows} increasing finite numbers (one per row "
                              f"of {files.features.name}), got {len(times)}")
        return 1000.0 / float(np.median(np.diff(times))) if rows > 1 else None
    return None


def _common_layout(checked: list[_Checked]) -> tuple[int, str]:
    """The one width of every video and the dtype to store: theirs if float16 or float32, else float32."""
    if not checked:
        raise ActrecError("the split lists name no videos")
    first = checked[0]
    for c in checked:
        if c.dim != first.dim:
            raise ActrecError(f"{c.files.features} has {c.dim}-d features but {first.files.features} {first.dim}-d; "
                              f"one cache holds one width (import each kind of feature into a cache of its own)")
    dtypes = {c.dtype for c in checked}
    dtype = dtypes.pop() if len(dtypes) == 1 and dtypes <= set(STORED_DTYPES) else "float32"
    if {c.dtype for c in checked} - set(STORED_DTYPES):
        log.warning("features of dtype %s are stored as float32", ", ".join(sorted({c.dtype for c in checked})))
    return first.dim, dtype


def _digest(checked: list[_Checked]) -> str:
    """One hash of every video's name, label and rows: two imports of the same files agree."""
    digest = hashlib.sha256()
    for c in checked:
        digest.update(f"{c.name}\0{c.label}\0{c.sha256}\n".encode())
    return digest.hexdigest()


def _write(target: Path, checked: list[_Checked], fingerprint: dict, class_names: list[str], dim: int, dtype: str,
           config: dict, fps: float | None) -> None:
    """Write the cache as ``.NAME.importing.h5`` (resumed there if interrupted), then rename it onto ``target``."""
    tmp = target.with_name(f".{target.stem}.importing{target.suffix}")
    with FeatureCacheWriter(tmp, fingerprint, class_names, dim, dtype=dtype, config=config, fps=fps) as writer:
        for c in tqdm(checked, desc="import: write", unit="video"):
            if c.name not in writer.done:
                writer.add(c.name, c.label, _rows(c.files))
    os.replace(tmp, target)
    for leftover in (f"{tmp}.lock", f"{tmp}.lock.pid"):
        Path(leftover).unlink(missing_ok=True)


def _rows(files: VideoFiles) -> np.ndarray:
    rows = load_array(files.features)
    return rows[None, :] if rows.ndim == 1 else rows
