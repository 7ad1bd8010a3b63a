"""Writing the feature cache: append videos, record failures, and recover the committed part after a crash.

Crash safety: the writer runs in HDF5 SWMR mode, where the library orders its
metadata writes so the file on disk is always readable as a snapshot. Each video
is committed in three flushed steps (feature rows, index row, ``index/count``),
so a ``kill -9`` at any moment leaves at most uncommitted rows past the last
committed video, which the next writer drops.

A full disk: before each video the writer checks that its rows fit with room to
spare, and stops cleanly if not. Should a write fail anyway (another program filled
the disk), HDF5 raises it at the flush that precedes the commit point. HDF5 cannot
abandon the writes it holds (closing the file then fails, and can crash the process),
so the writer keeps a few MiB in reserve (``CACHE.reserve``, allocated while it runs):
on a failed write it frees them, lets HDF5 finish its pending writes, and closes the
file; rows past the last commit are dropped by the next run, which goes on from there.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np

from pipeline.cache.fingerprint import compatibility_differences, mismatch_error
from pipeline.cache.lock import WriteLock
from pipeline.cache.reader import (
    COLUMNS,
    NAME_BYTES,
    REASON_BYTES,
    SHORT_COLUMNS,
    committed_frames,
    open_error,
    open_for_reading,
    read_meta,
    write_attributes,
)
from pipeline.errors import ActrecError
from pipeline.fileio import reporting_write_errors, write_error

log = logging.getLogger(__name__)

RECOVERY_ROWS = 1 << 16  # rows per read when copying a crashed file's committed prefix
SPARE_BYTES = 2 << 20  # room kept free beyond a video's rows: new chunks, index rows, metadata
RESERVE_BYTES = 8 << 20  # freed after a failed write, so HDF5 can finish its pending writes and close the file
_GROUPS = {**COLUMNS, "short": SHORT_COLUMNS}  # every row group this writer keeps


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


def _create_group(f: h5py.File, group: str, columns: dict) -> None:
    """Empty appendable columns of ``group`` and its ``count`` of committed rows."""
    for name, dtype in columns.items():
        f.create_dataset(f"{group}/{name}", shape=(0,), maxshape=(None,), chunks=(1024,), dtype=dtype)
    f.create_dataset(f"{group}/count", data=np.zeros(1, np.int64))


def _allocate(path: Path, size: int) -> None:
    """A file of ``size`` bytes whose blocks are really allocated (a sparse file would free nothing)."""
    with open(path, "wb") as f:
        if hasattr(os, "posix_fallocate"):  # not on macOS
            try:
                os.posix_fallocate(f.fileno(), 0, size)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
        f.write(bytes(size))


def _close_quietly(writer, f: h5py.File) -> None:
    """Close a file whose writes have failed: HDF5 retries them while closing and can only print the errors,
    which would bury the one line that says what happened. The next writer recovers the committed part."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: log.debug("closing after a failed write: %s", unraisable.exc_value)
    try:
        writer._ds = {}
        f.close()
    except (OSError, RuntimeError) as exc:
        log.debug("closing after a failed write: %s", exc)
    finally:
        sys.unraisablehook = hook


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
        self._failed: ActrecError | None = None
        self._reserve = self.path.with_name(self.path.name + ".reserve")
        try:
            with reporting_write_errors(self.path):
                self._lock.acquire()
                _allocate(self._reserve, RESERVE_BYTES)
                self._file = self._open()
                # Handles held for the writer's life: a dataset handle dropped after each write would flush its
                # chunks when garbage-collected, where HDF5's write errors are only printed, never raised.
                self._ds = {name: self._file[name] for name in self._feature_datasets}
                self._ds.update({f"{group}/{column}": self._file[f"{group}/{column}"]
                                 for group, columns in _GROUPS.items() for column in (*columns, "count")})
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
            f = h5py.File(self.path, "r+", libver="latest", locking=False)
        except (OSError, RuntimeError) as exc:
            if "consistency flags" in str(exc):
                raise
            raise open_error(self.path, exc) from exc
        return f

    def _create(self, target: Path) -> None:
        """Write an empty cache with all datasets (SWMR cannot create objects later) via temp + rename."""
        tmp = target.with_name(target.name + ".tmp")
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(tmp.unlink, missing_ok=True)  # nothing half-made stays behind
            self._write_empty(tmp)
            os.replace(tmp, target)

    def _write_empty(self, tmp: Path) -> None:
        with h5py.File(tmp, "w", libver="latest", locking=False) as f:
            write_attributes(f, self.fingerprint, self.class_names, self.config, self.dim, self.dtype.name, self.fps)
            rows = self.chunk_rows or _chunk_rows(self.dim, self.dtype.itemsize)
            for name in self._feature_datasets:
                f.create_dataset(name, shape=(0, self.dim), maxshape=(None, self.dim), chunks=(rows, self.dim),
                                 dtype=self.dtype)
            for group, datasets in _GROUPS.items():
                _create_group(f, group, datasets)

    def _recover(self) -> None:
        """Rebuild the file from the committed state of a killed writer (committed rows copied exactly)."""
        with open_for_reading(self.path) as old:
            meta = read_meta(old, self.path)
            self._check_matches(meta)
            total = committed_frames(meta)
            log.warning("%s: the last embed stopped abruptly; keeping its %d committed videos (%d frames)",
                        self.path, len(meta["names"]), total)
            recovered = self.path.with_name(self.path.name + ".recovered")
            try:
                self._create(recovered)
                self._copy_committed(old, meta, recovered)
            except BaseException:
                recovered.unlink(missing_ok=True)
                raise
        os.replace(recovered, self.path)

    def _copy_committed(self, old: h5py.File, meta: dict, recovered: Path) -> None:
        total = committed_frames(meta)
        with h5py.File(recovered, "r+", libver="latest", locking=False) as new:
            new.attrs["config"] = old.attrs["config"]
            new.attrs["created"] = old.attrs["created"]
            if "fps" in old.attrs:
                new.attrs["fps"] = old.attrs["fps"]
            for name in self._feature_datasets:
                _copy_prefix(old[name], new[name], total)
            groups = [("index", len(meta["names"])), ("failures", int(old["failures/count"][0]))]
            groups += [("short", int(old["short/count"][0]))] if "short/count" in old else []
            for group, rows in groups:
                for column in _GROUPS[group]:
                    _copy_prefix(old[f"{group}/{column}"], new[f"{group}/{column}"], rows)
                new[f"{group}/count"][0] = rows

    def _check_matches(self, meta: dict) -> None:
        differences = compatibility_differences(meta, self.settings)
        if differences:
            raise mismatch_error(self.path, differences)

    @property
    def settings(self) -> dict:
        """What this writer's features are, in the terms ``compatibility_differences`` compares."""
        return {"fingerprint": self.fingerprint, "class_names": self.class_names, "dim": self.dim,
                "dtype": self.dtype.name, "has_flip": self.flip}

    def _load_state(self) -> None:
        """Read the committed state and drop anything past it (rows of a video that was never committed)."""
        meta = read_meta(self._file, self.path)
        self._count = len(meta["names"])
        self._frames = committed_frames(meta)
        self._failure_rows = meta["failure_rows"]
        self._n_failure_rows = int(self._ds["failures/count"][0])
        self.done = set(meta["names"])
        self.failures = dict(meta["failures"])
        for name in self._feature_datasets:
            if self._ds[name].shape[0] != self._frames:
                self._ds[name].resize(self._frames, axis=0)
        self._n_short_rows = int(self._ds["short/count"][0])
        for group, rows in (("index", self._count), ("failures", self._n_failure_rows), ("short", self._n_short_rows)):
            for column in _GROUPS[group]:
                self._ds[f"{group}/{column}"].resize(rows, axis=0)
        self._file.flush()

    # -- writing ------------------------------------------------------------------------------------------------

    def add(self, name: str, label: int, features: np.ndarray, flip_features: np.ndarray | None = None,
            header_frames: int | None = None) -> None:
        """Append one video's features ``[T, D]``; it counts as done only once data and index are flushed.

        ``header_frames``: the frame count the video's header lists, when its decode ended before it; recorded
        (before the video's commit point, so a committed short video is never unrecorded) for ``actrec info``."""
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
        with self._writing():
            self._check_space(len(rows) * len(features) * self.dim * self.dtype.itemsize)
            for dataset, values in rows:
                self._ds[dataset].resize(stop, axis=0)
                self._ds[dataset][start:stop] = values.astype(self.dtype, copy=False)
            self._file.flush()
            if header_frames is not None and header_frames > len(features):
                self._commit_row("short", self._n_short_rows, {"names": encoded, "header_frames": header_frames})
                self._n_short_rows += 1
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
        with self._writing():
            self._check_space(0)
            self._commit_row("failures", self._n_failure_rows, {"names": _encode(name, NAME_BYTES, "video name"),
                                                                 "reasons": reason.encode("utf-8")[:REASON_BYTES]})
        self._n_failure_rows += 1
        self._failure_rows[name] = reason

    def _commit_row(self, group: str, n: int, row: dict) -> None:
        """Write row ``n`` of ``group``'s columns, flush, then raise its count to ``n + 1``: the commit point."""
        for column, value in row.items():
            self._ds[f"{group}/{column}"].resize(n + 1, axis=0)
            self._ds[f"{group}/{column}"][n] = value
        self._file.flush()
        self._ds[f"{group}/count"][0] = n + 1
        self._file.flush()

    @contextlib.contextmanager
    def _writing(self):
        """Run one commit; after a failed write refuse all later ones (HDF5's state in memory is then unknown)."""
        if self._failed is not None:
            raise self._failed
        try:
            yield
        except (OSError, RuntimeError) as exc:
            self._failed = write_error(self.path, exc) or ActrecError(
                f"writing {self.path} failed ({str(exc).splitlines()[0][:200]}); run the command again to resume "
                f"from the last complete video")
            self._reserve.unlink(missing_ok=True)
            try:
                self._file.flush()  # HDF5 retries the writes it holds, now with room for them
            except (OSError, RuntimeError) as again:
                log.debug("flush after a failed write failed again: %s", again)
            raise self._failed from exc

    def _check_space(self, nbytes: int) -> None:
        """Stop before a video's rows that would not fit: a clean stop leaves a file the next run simply extends."""
        free = shutil.disk_usage(self.path.parent).free
        if free < nbytes + SPARE_BYTES:
            raise write_error(self.path, OSError(errno.ENOSPC, f"{free:,} bytes free, {nbytes + SPARE_BYTES:,} needed"))

    @property
    def frames(self) -> int:
        """Frames committed so far."""
        return self._frames

    def close(self) -> None:
        f = getattr(self, "_file", None)
        if f is not None and f.id.valid:
            if getattr(self, "_failed", None) is None:
                self._ds = {}
                f.close()
            else:
                _close_quietly(self, f)
        self._ds = {}
        self._file = None
        self._reserve.unlink(missing_ok=True)
        self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
