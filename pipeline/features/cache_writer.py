"""Writing the feature cache: append videos, record failures, and recover the committed part after a crash.

Crash safety: the writer runs in HDF5 SWMR mode, where the library orders its
metadata writes so the file on disk is always readable as a snapshot. Each video
is committed in three flushed steps (feature rows, index row, ``index/count``),
so a ``kill -9`` at any moment leaves at most uncommitted rows past the last
committed video, which the next writer drops.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import ActrecError
from pipeline.features.cache import (
    COLUMNS,
    FORMAT_VERSION,
    NAME_BYTES,
    REASON_BYTES,
    committed_frames,
    open_error,
    open_for_reading,
    read_meta,
)
from pipeline.features.fingerprint import fingerprint_differences, mismatch_error
from pipeline.features.writelock import WriteLock

log = logging.getLogger(__name__)

RECOVERY_ROWS = 1 << 16  # rows per read when copying a crashed file's committed prefix


def _encode(text: str, limit: int, what: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > limit:
        raise ActrecError(f"{what} {text[:60]!r}... is longer than {limit} bytes, the cache's limit")
    return data


def _chunk_rows(dim: int, itemsize: int) -> int:
    """Rows per chunk: about 1 MiB (fits HDF5's default chunk cache), between 256 and 1024 frames."""
    return int(min(1024, max(256, (1 << 20) // (dim * itemsize))))


def _copy_prefix(source: h5py.Dataset, target: h5py.Dataset, rows: int) -> None:
    """Copy the first ``rows`` rows, a bounded block at a time (feature arrays can exceed memory)."""
    target.resize(rows, axis=0)
    for start in range(0, rows, RECOVERY_ROWS):
        stop = min(rows, start + RECOVERY_ROWS)
        target[start:stop] = source[start:stop]


class FeatureCacheWriter:
    """Append videos' features to a cache file; creates it, or resumes (and if need be recovers) an existing one.

    Use as a context manager. ``done`` holds the names already committed; ``failures`` the decode failures
    recorded so far (name -> reason).
    """

    def __init__(self, path, fingerprint: dict, class_names: list[str], dim: int, flip: bool = False,
                 dtype: str = "float16", config: dict | None = None, fps: float | None = None,
                 chunk_rows: int | None = None):
        self.path = Path(path)
        self.fingerprint = dict(fingerprint)
        self.class_names = list(class_names)
        self.dim = int(dim)
        self.flip = bool(flip)
        self.dtype = np.dtype(dtype)
        self.config = config or {}
        self.fps = fps
        self.chunk_rows = chunk_rows  # rows per HDF5 chunk of the feature arrays (None: about 1 MiB)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ActrecError(f"cannot create the folder of cache.path {self.path}: {exc.strerror}") from exc
        self._lock = WriteLock(self.path)
        self._lock.acquire()
        try:
            self._file = self._open()
            self._load_state()
            self._file.swmr_mode = True
        except BaseException:
            self.close()
            raise

    @property
    def _feature_datasets(self) -> list[str]:
        return ["features", "features_flip"] if self.flip else ["features"]

    # -- opening ------------------------------------------------------------------------------------------------

    def _open(self) -> h5py.File:
        if not self.path.exists():
            self._create(self.path)
            return self._open_rw()
        try:
            f = self._open_rw()
        except OSError as exc:
            # A writer killed in SWMR mode leaves the "open for write" flag set; HDF5 then refuses to
            # reopen the file for writing, but a SWMR reader sees the last flushed state. Copy that out.
            if "consistency flags" not in str(exc):
                raise open_error(self.path, exc) from exc
            self._recover()
            f = self._open_rw()
        try:
            self._check_matches(read_meta(f, self.path))
        except BaseException:
            f.close()
            raise
        return f

    def _open_rw(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r+", libver="latest", locking=False)
        except (OSError, RuntimeError) as exc:
            if "consistency flags" in str(exc):
                raise
            raise open_error(self.path, exc) from exc

    def _create(self, target: Path) -> None:
        """Write an empty cache with all datasets (SWMR cannot create objects later) via temp + rename."""
        tmp = target.with_name(target.name + ".tmp")
        with h5py.File(tmp, "w", libver="latest", locking=False) as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["fingerprint"] = json.dumps(self.fingerprint, sort_keys=True)
            f.attrs["class_names"] = json.dumps(self.class_names)
            f.attrs["config"] = json.dumps(self.config, sort_keys=True, default=str)
            f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            f.attrs["dim"] = self.dim
            f.attrs["dtype"] = self.dtype.name
            if self.fps:
                f.attrs["fps"] = float(self.fps)
            rows = self.chunk_rows or _chunk_rows(self.dim, self.dtype.itemsize)
            for name in self._feature_datasets:
                f.create_dataset(name, shape=(0, self.dim), maxshape=(None, self.dim), chunks=(rows, self.dim),
                                 dtype=self.dtype)
            for group, datasets in COLUMNS.items():
                for name, dtype in datasets.items():
                    f.create_dataset(f"{group}/{name}", shape=(0,), maxshape=(None,), chunks=(1024,), dtype=dtype)
                f.create_dataset(f"{group}/count", data=np.zeros(1, np.int64))
        os.replace(tmp, target)

    def _recover(self) -> None:
        """Rebuild the file from the committed state of a killed writer (committed rows copied exactly)."""
        with open_for_reading(self.path) as old:
            meta = read_meta(old, self.path)
            self._check_matches(meta)
            total = committed_frames(meta)
            log.warning("%s: the last embed stopped abruptly; keeping its %d committed videos (%d frames)",
                        self.path, len(meta["names"]), total)
            recovered = self.path.with_name(self.path.name + ".recovered")
            self._create(recovered)
            with h5py.File(recovered, "r+", libver="latest", locking=False) as new:
                new.attrs["config"] = old.attrs["config"]
                new.attrs["created"] = old.attrs["created"]
                if "fps" in old.attrs:
                    new.attrs["fps"] = old.attrs["fps"]
                for name in self._feature_datasets:
                    _copy_prefix(old[name], new[name], total)
                for group, rows in (("index", len(meta["names"])), ("failures", int(old["failures/count"][0]))):
                    for column in COLUMNS[group]:
                        _copy_prefix(old[f"{group}/{column}"], new[f"{group}/{column}"], rows)
                    new[f"{group}/count"][0] = rows
        os.replace(recovered, self.path)

    def _check_matches(self, meta: dict) -> None:
        differences = fingerprint_differences(meta["fingerprint"], self.fingerprint)
        if meta["class_names"] != self.class_names:
            differences.append(f"class_names: cache has {len(meta['class_names'])} classes "
                               f"({', '.join(meta['class_names'][:3])}, ...), the dataset has {len(self.class_names)} "
                               f"({', '.join(self.class_names[:3])}, ...)")
        for key, mine in (("dim", self.dim), ("has_flip", self.flip), ("dtype", self.dtype.name)):
            if meta[key] != mine:
                differences.append(f"{key}: cache has {meta[key]!r}, this embed writes {mine!r}")
        if differences:
            raise mismatch_error(self.path, differences)

    def _load_state(self) -> None:
        """Read the committed state and drop anything past it (rows of a video that was never committed)."""
        meta = read_meta(self._file, self.path)
        self._count = len(meta["names"])
        self._frames = committed_frames(meta)
        self._failure_rows = meta["failure_rows"]
        self._n_failure_rows = int(self._file["failures/count"][0])
        self.done = set(meta["names"])
        self.failures = dict(meta["failures"])
        for name in self._feature_datasets:
            if self._file[name].shape[0] != self._frames:
                self._file[name].resize(self._frames, axis=0)
        for group, rows in (("index", self._count), ("failures", self._n_failure_rows)):
            for column in COLUMNS[group]:
                self._file[f"{group}/{column}"].resize(rows, axis=0)
        self._file.flush()

    # -- writing ------------------------------------------------------------------------------------------------

    def add(self, name: str, label: int, features: np.ndarray, flip_features: np.ndarray | None = None) -> None:
        """Append one video's features ``[T, D]``; it counts as done only once data and index are flushed."""
        if name in self.done:
            raise ValueError(f"{name} is already in {self.path}")
        if features.ndim != 2 or features.shape[1] != self.dim or features.shape[0] == 0:
            raise ValueError(f"{name}: features must be [T>0, {self.dim}], got {features.shape}")
        if self.flip != (flip_features is not None):
            raise ValueError(f"{name}: this cache {'needs' if self.flip else 'takes no'} flip features")
        if flip_features is not None and flip_features.shape != features.shape:
            raise ValueError(f"{name}: flip features {flip_features.shape} differ from features {features.shape}")
        encoded = _encode(name, NAME_BYTES, "video name")
        start, stop = self._frames, self._frames + len(features)
        rows = [("features", features)] + ([("features_flip", flip_features)] if self.flip else [])
        for dataset, values in rows:
            self._file[dataset].resize(stop, axis=0)
            self._file[dataset][start:stop] = values.astype(self.dtype, copy=False)
        self._file.flush()
        self._commit_row("index", self._count,
                         {"names": encoded, "labels": label, "offsets": start, "lengths": len(features)})
        self._count += 1
        self._frames = stop
        self.done.add(name)
        self.failures.pop(name, None)

    def add_failure(self, name: str, reason: str) -> None:
        """Record a video that could not be embedded (kept across runs until it succeeds)."""
        self.failures[name] = reason
        if self._failure_rows.get(name) == reason:
            return
        self._commit_row("failures", self._n_failure_rows, {"names": _encode(name, NAME_BYTES, "video name"),
                                                             "reasons": reason.encode("utf-8")[:REASON_BYTES]})
        self._n_failure_rows += 1
        self._failure_rows[name] = reason

    def _commit_row(self, group: str, n: int, row: dict) -> None:
        """Write row ``n`` of ``group``'s columns, flush, then raise its count to ``n + 1``: the commit point."""
        for column, value in row.items():
            self._file[f"{group}/{column}"].resize(n + 1, axis=0)
            self._file[f"{group}/{column}"][n] = value
        self._file.flush()
        self._file[f"{group}/count"][0] = n + 1
        self._file.flush()

    @property
    def frames(self) -> int:
        """Frames committed so far."""
        return self._frames

    def close(self) -> None:
        f = getattr(self, "_file", None)
        if f is not None and f.id.valid:
            f.close()
        self._file = None
        self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
