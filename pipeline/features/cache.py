"""The HDF5 feature cache: the contract between stage one (embed) and stage two (train).

One file holds the features of every frame of every video, stacked along axis 0
(``features [total_frames, D]``), plus a per-video index (name, label, offset,
length). The layout is documented in cache/README.md.

Crash safety: the writer runs in HDF5 SWMR mode, where the library orders its
metadata writes so the file on disk is always readable as a snapshot. Each video
is committed in three flushed steps (feature rows, index row, ``index/count``),
so a ``kill -9`` at any moment leaves at most uncommitted rows past the last
committed video, which the next writer drops.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path

import click
import h5py
import numpy as np

from pipeline.errors import ActrecError

FORMAT_VERSION = 1
NAME_BYTES = 255  # fixed-length names: SWMR appends cannot use variable-length strings
REASON_BYTES = 1024
RECOVERY_ROWS = 1 << 16  # rows per read when copying a crashed file's committed prefix


def embed_fingerprint(cfg) -> dict:
    """Everything that changes the cached features; stage two and a resumed embed compare against it."""
    import torch
    import torchvision

    from pipeline.data.datasets import split_files_signature
    from pipeline.features.backbone import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        RESIZE,
        weights_identity,
    )

    fingerprint = {
        "dataset": cfg.data.name,
        "split_files": split_files_signature(cfg),
        "backbone": cfg.embed.backbone,
        "weights": weights_identity(cfg.embed.backbone, cfg.embed.weights),
        "img_dim": cfg.embed.img_dim,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "resize": RESIZE,
        "source": cfg.embed.source,
        "frames": "every frame",
        "flip": cfg.embed.flip,
        "dtype": cfg.embed.dtype,
        "torch": _major_minor(torch.__version__),
        "torchvision": _major_minor(torchvision.__version__),
    }
    if cfg.embed.source == "frames":
        fingerprint["jpeg_quality"] = cfg.extract.jpeg_quality  # JPEG loss changes the features
    return fingerprint


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


# Recorded by embed from the machine it ran on (not derivable from a config): a resumed embed must match
# it, so one cache never mixes fp32 and bf16 features; stage two, which may run elsewhere, does not ask.
# Compared only where both sides record it.
MACHINE_KEYS = {"forward_dtype"}


def fingerprint_differences(cached: dict, expected: dict) -> list[str]:
    """One line per key whose value differs between a cache and the current config."""
    keys = [k for k in sorted(set(cached) | set(expected))
            if k not in MACHINE_KEYS or (k in cached and k in expected)]
    source = {k: "this machine (embed.device, embed.precision) gives" for k in MACHINE_KEYS}
    return [f"{k}: cache has {cached.get(k, '<missing>')!r}, {source.get(k, 'config gives')} "
            f"{expected.get(k, '<missing>')!r}" for k in keys if cached.get(k) != expected.get(k)]


def _mismatch_error(path, differences: list[str]) -> ActrecError:
    return ActrecError(f"{path} was made with other settings ({'; '.join(differences)}). Set cache.path to a "
                       f"new file (the default path includes dataset, backbone, weights, img_dim and source), "
                       f"or delete {path} and run `actrec embed` again")


def _open_error(path, exc: Exception) -> ActrecError:
    if "already open" in str(exc) or "unable to lock" in str(exc):
        return ActrecError(f"{path}: the HDF5 file is in use elsewhere ({exc}); close the program using it and "
                           f"run again")
    if Path(path).is_dir() or not _starts_like_hdf5(path):
        return ActrecError(f"{path} is not an HDF5 feature cache; point cache.path (or `actrec info`) at a file "
                           f"written by `actrec embed`")
    return ActrecError(f"{path}: the HDF5 file cannot be read ({exc}); it is damaged. Delete it and run "
                       f"`actrec embed` again")


def _starts_like_hdf5(path) -> bool:
    """HDF5's signature at offset 0 (where h5py writes it): tells a damaged cache from some other file."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def _decode(values) -> list[str]:
    return [v.decode("utf-8", errors="ignore") if isinstance(v, bytes) else str(v) for v in values]


def _encode(text: str, limit: int, what: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > limit:
        raise ActrecError(f"{what} {text[:60]!r}... is longer than {limit} bytes, the cache's limit")
    return data


def _chunk_rows(dim: int, itemsize: int) -> int:
    """Rows per chunk: about 1 MiB (fits HDF5's default chunk cache), between 256 and 1024 frames."""
    return int(min(1024, max(256, (1 << 20) // (dim * itemsize))))


def _read_meta(f: h5py.File, path) -> dict:
    """Attributes and committed index of an open cache file."""
    try:
        version = int(f.attrs["format_version"])
        meta = {
            "fingerprint": json.loads(f.attrs["fingerprint"]),
            "class_names": json.loads(f.attrs["class_names"]),
            "config": json.loads(f.attrs["config"]),
            "created": str(f.attrs["created"]),
            "dim": int(f.attrs["dim"]),
            "dtype": str(f.attrs["dtype"]),
            "has_flip": "features_flip" in f,
        }
    except (KeyError, ValueError, TypeError) as exc:
        raise ActrecError(f"{path} is not a feature cache written by `actrec embed` (missing or bad attribute: "
                          f"{exc}). Point cache.path elsewhere or delete the file") from exc
    if version != FORMAT_VERSION:
        raise ActrecError(f"{path} has cache format version {version}; this code reads version {FORMAT_VERSION}. "
                          f"Delete it and run `actrec embed` again")
    count = int(f["index/count"][0])
    meta["names"] = _decode(f["index/names"][:count])
    meta["labels"] = f["index/labels"][:count].astype(np.int64)
    meta["offsets"] = f["index/offsets"][:count].astype(np.int64)
    meta["lengths"] = f["index/lengths"][:count].astype(np.int64)
    n_failed = int(f["failures/count"][0])
    # A later record for the same name replaces an earlier one; a name that was embedded since is no failure.
    failures = dict(zip(_decode(f["failures/names"][:n_failed]), _decode(f["failures/reasons"][:n_failed])))
    committed = set(meta["names"])
    meta["failures"] = {name: reason for name, reason in failures.items() if name not in committed}
    meta["failure_rows"] = failures
    return meta


def _committed_frames(meta: dict) -> int:
    if not len(meta["offsets"]):
        return 0
    return int(meta["offsets"][-1] + meta["lengths"][-1])


def _open_for_reading(path) -> h5py.File:
    """Open read-only in SWMR mode: works while a writer appends, and on a file whose writer was killed."""
    try:
        # HDF5's own file lock would block a resuming writer; writers serialise on the .lock file instead.
        return h5py.File(path, "r", swmr=True, locking=False)
    except (OSError, RuntimeError) as exc:
        raise _open_error(path, exc) from exc


class _WriteLock:
    """Exclusive lock file ``<cache>.lock`` holding the writer's pid; the kernel drops it if the writer dies."""

    def __init__(self, cache_path: Path):
        self.path = Path(str(cache_path) + ".lock")
        self.fd = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                cache = str(self.path)[: -len(".lock")]
                raise ActrecError(f"another embed is writing {cache} (pid {lock_owner(self.path) or '?'}); wait "
                                  f"for it to finish or stop it, then run again") from exc
            # The previous holder unlinks the file on release; a lock on an unlinked inode protects nothing.
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


def lock_owner(lock_path) -> int | None:
    """Pid written in a lock file, if that process is alive."""
    try:
        pid = int(Path(lock_path).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


class FeatureCacheWriter:
    """Append videos' features to a cache file; creates it, or resumes (and if need be recovers) an existing one.

    Use as a context manager. ``done`` holds the names already committed; ``failures`` the decode failures
    recorded so far (name -> reason).
    """

    def __init__(self, path, fingerprint: dict, class_names: list[str], dim: int, flip: bool = False,
                 dtype: str = "float16", config: dict | None = None):
        self.path = Path(path)
        self.fingerprint = dict(fingerprint)
        self.class_names = list(class_names)
        self.dim = int(dim)
        self.flip = bool(flip)
        self.dtype = np.dtype(dtype)
        self.config = config or {}
        self.recovered = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ActrecError(f"cannot create the folder of cache.path {self.path}: {exc.strerror}") from exc
        self._lock = _WriteLock(self.path)
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
                raise _open_error(self.path, exc) from exc
            self._recover()
            f = self._open_rw()
        try:
            self._check_matches(_read_meta(f, self.path))
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
            raise _open_error(self.path, exc) from exc

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
            rows = _chunk_rows(self.dim, self.dtype.itemsize)
            for name in self._feature_datasets:
                f.create_dataset(name, shape=(0, self.dim), maxshape=(None, self.dim), chunks=(rows, self.dim),
                                 dtype=self.dtype)
            name_type = h5py.string_dtype("utf-8", NAME_BYTES)
            reason_type = h5py.string_dtype("utf-8", REASON_BYTES)
            columns = {"index": {"names": name_type, "labels": np.int32, "offsets": np.int64, "lengths": np.int64},
                       "failures": {"names": name_type, "reasons": reason_type}}
            for group, datasets in columns.items():
                for name, dtype in datasets.items():
                    f.create_dataset(f"{group}/{name}", shape=(0,), maxshape=(None,), chunks=(1024,), dtype=dtype)
                f.create_dataset(f"{group}/count", data=np.zeros(1, np.int64))
        os.replace(tmp, target)

    def _recover(self) -> None:
        """Rebuild the file from the committed state of a killed writer (committed rows copied exactly)."""
        with _open_for_reading(self.path) as old:
            meta = _read_meta(old, self.path)
            self._check_matches(meta)
            total = _committed_frames(meta)
            click.echo(f"{self.path}: the last embed stopped abruptly; keeping its {len(meta['names'])} "
                       f"committed videos ({total} frames)", err=True)
            recovered = self.path.with_name(self.path.name + ".recovered")
            self._create(recovered)
            with h5py.File(recovered, "r+", libver="latest", locking=False) as new:
                new.attrs["config"] = old.attrs["config"]
                new.attrs["created"] = old.attrs["created"]
                for name in self._feature_datasets:
                    new[name].resize(total, axis=0)
                    for start in range(0, total, RECOVERY_ROWS):
                        stop = min(total, start + RECOVERY_ROWS)
                        new[name][start:stop] = old[name][start:stop]
                count = len(meta["names"])
                for column in ("names", "labels", "offsets", "lengths"):
                    new[f"index/{column}"].resize(count, axis=0)
                    new[f"index/{column}"][:] = old[f"index/{column}"][:count]
                new["index/count"][0] = count
                n_failed = int(old["failures/count"][0])
                for column in ("names", "reasons"):
                    new[f"failures/{column}"].resize(n_failed, axis=0)
                    new[f"failures/{column}"][:] = old[f"failures/{column}"][:n_failed]
                new["failures/count"][0] = n_failed
        os.replace(recovered, self.path)
        self.recovered = True

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
            raise _mismatch_error(self.path, differences)

    def _load_state(self) -> None:
        """Read the committed state and drop anything past it (rows of a video that was never committed)."""
        meta = _read_meta(self._file, self.path)
        self._count = len(meta["names"])
        self._frames = _committed_frames(meta)
        self._failure_rows = meta["failure_rows"]
        self._n_failure_rows = int(self._file["failures/count"][0])
        self.done = set(meta["names"])
        self.failures = dict(meta["failures"])
        for name in self._feature_datasets:
            if self._file[name].shape[0] != self._frames:
                self._file[name].resize(self._frames, axis=0)
        for column in ("names", "labels", "offsets", "lengths"):
            self._file[f"index/{column}"].resize(self._count, axis=0)
        for column in ("names", "reasons"):
            self._file[f"failures/{column}"].resize(self._n_failure_rows, axis=0)
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
        row = {"names": encoded, "labels": label, "offsets": start, "lengths": len(features)}
        for column, value in row.items():
            self._file[f"index/{column}"].resize(self._count + 1, axis=0)
            self._file[f"index/{column}"][self._count] = value
        self._file.flush()
        self._file["index/count"][0] = self._count + 1  # the commit point
        self._file.flush()
        self._count += 1
        self._frames = stop
        self.done.add(name)
        self.failures.pop(name, None)

    def add_failure(self, name: str, reason: str) -> None:
        """Record a video that could not be embedded (kept across runs until it succeeds)."""
        self.failures[name] = reason
        if self._failure_rows.get(name) == reason:
            return
        row = {"names": _encode(name, NAME_BYTES, "video name"),
               "reasons": reason.encode("utf-8")[:REASON_BYTES]}
        for column, value in row.items():
            self._file[f"failures/{column}"].resize(self._n_failure_rows + 1, axis=0)
            self._file[f"failures/{column}"][self._n_failure_rows] = value
        self._file.flush()
        self._file["failures/count"][0] = self._n_failure_rows + 1
        self._file.flush()
        self._n_failure_rows += 1
        self._failure_rows[name] = reason

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


class FeatureCache:
    """Read side of the cache. Index and attributes load at construction; the feature arrays are opened
    lazily in each process that reads them, so the object pickles into DataLoader workers."""

    def __init__(self, path, expected_fingerprint: dict | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise ActrecError(f"no feature cache at {self.path}; run `actrec embed` with the same config first")
        with _open_for_reading(self.path) as f:
            meta = _read_meta(f, self.path)
        if expected_fingerprint is not None:
            differences = fingerprint_differences(meta["fingerprint"], expected_fingerprint)
            if differences:
                raise _mismatch_error(self.path, differences)
        self.fingerprint: dict = meta["fingerprint"]
        self.class_names: list[str] = meta["class_names"]
        self.config: dict = meta["config"]
        self.created: str = meta["created"]
        self.dim: int = meta["dim"]
        self.dtype: str = meta["dtype"]
        self.has_flip: bool = meta["has_flip"]
        self.names: list[str] = meta["names"]
        self.labels: np.ndarray = meta["labels"]
        self.offsets: np.ndarray = meta["offsets"]
        self.lengths: np.ndarray = meta["lengths"]
        self.failures: dict[str, str] = meta["failures"]
        self.total_frames = _committed_frames(meta)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._memory: dict[bool, np.ndarray] = {}
        self._file = None
        self._file_pid = None

    def __len__(self) -> int:
        return len(self.names)

    def index_of(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            hint = f" (embedding failed: {self.failures[name]})" if name in self.failures else ""
            raise ActrecError(f"{name} is not in {self.path}{hint}; run `actrec embed` with the same config to "
                              f"add missing videos") from None

    def _dataset(self, flip: bool):
        if flip and not self.has_flip:
            raise ActrecError(f"{self.path} has no flip features; embed with --set embed.flip=true")
        if flip in self._memory:
            return self._memory[flip]
        if self._file is None or self._file_pid != os.getpid():
            # A handle inherited through fork is not safe to use; each process opens its own.
            self._file = _open_for_reading(self.path)
            self._file_pid = os.getpid()
        return self._file["features_flip" if flip else "features"]

    def sequence(self, i: int, flip: bool = False) -> np.ndarray:
        """Features of video ``i``, ``[T, D]`` float32."""
        start = int(self.offsets[i])
        return np.asarray(self._dataset(flip)[start:start + int(self.lengths[i])], dtype=np.float32)

    def frames(self, i: int, frame_indices: np.ndarray, flip: bool = False) -> np.ndarray:
        """Features of some frames of video ``i`` (any order, repeats allowed), ``[L, D]`` float32."""
        frame_indices = np.asarray(frame_indices, dtype=np.int64)
        length = int(self.lengths[i])
        if frame_indices.size and (frame_indices.min() < 0 or frame_indices.max() >= length):
            raise IndexError(f"{self.names[i]} has {length} frames; asked for {frame_indices.min()}.."
                             f"{frame_indices.max()}")
        data = self._dataset(flip)
        start = int(self.offsets[i])
        if isinstance(data, np.ndarray) or not frame_indices.size:
            return data[start + frame_indices].astype(np.float32)
        lo, hi = int(frame_indices.min()), int(frame_indices.max()) + 1
        unique = np.unique(frame_indices)
        if hi - lo <= 2 * len(unique):
            # Dense: one contiguous read beats a point selection.
            block = data[start + lo:start + hi]
            return block[frame_indices - lo].astype(np.float32)
        block = data[start + unique]
        return block[np.searchsorted(unique, frame_indices)].astype(np.float32)

    def load_all(self) -> None:
        """Read the whole feature array(s) into memory; later reads touch no disk."""
        for flip in (False, True) if self.has_flip else (False,):
            if flip not in self._memory:
                self._memory[flip] = self._dataset(flip)[: self.total_frames]
        self.close()

    @property
    def nbytes(self) -> int:
        """Size of the committed feature array(s) in memory."""
        return self.total_frames * self.dim * np.dtype(self.dtype).itemsize * (2 if self.has_flip else 1)

    def close(self) -> None:
        if self._file is not None and self._file_pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = None
        state["_file_pid"] = None
        return state


def describe_cache(path) -> str:
    """Human-readable summary for ``actrec info``: fingerprint, counts, size, failures."""
    cache = FeatureCache(path)
    size = Path(path).stat().st_size
    lines = [
        f"cache:      {cache.path} ({size / 2**20:.1f} MiB, format {FORMAT_VERSION}, created {cache.created})",
        f"videos:     {len(cache.names)}",
        f"frames:     {cache.total_frames}",
        f"failures:   {len(cache.failures)}",
        f"classes:    {len(cache.class_names)}",
        f"features:   {cache.dim}-d {cache.dtype}{' + flip' if cache.has_flip else ''}",
    ]
    if len(cache.names):
        lengths = cache.lengths
        lines.append(f"length:     {lengths.min()} to {lengths.max()} frames per video (mean {lengths.mean():.1f})")
    owner = lock_owner(str(cache.path) + ".lock")
    if owner:
        lines.append(f"status:     being written by pid {owner} (counts grow until it finishes)")
    lines.append("fingerprint:")
    lines += [f"  {key}: {value}" for key, value in sorted(cache.fingerprint.items())]
    if cache.failures:
        lines.append("failed videos:")
        lines += [f"  {name}: {reason}" for name, reason in sorted(cache.failures.items())]
    return "\n".join(lines)
