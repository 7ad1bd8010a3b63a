"""The HDF5 feature cache, the contract between stage one (embed) and stage two (train): layout and reader.

One file holds the features of every frame of every video, stacked along axis 0
(``features [total_frames, D]``), plus a per-video index (name, label, offset,
length). The layout is documented in docs/cache-format.md; ``writer.py`` writes it,
``fingerprint.py`` compares the stored fingerprint, ``lock.py`` lets one writer at a
time in, and ``virtual.py`` checks the shards a virtual join reads from. Stage two opens
a cache with ``open_cache``, finds its videos with ``cache_rows`` and puts the features
in memory or leaves them on disk with ``FeatureCache.place``. A reader sees the committed
videos only, also while a writer appends.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from pipeline.cache.fingerprint import fingerprint_differences, mismatch_error, stage_two_differences
from pipeline.cache.lock import lock_holder
from pipeline.cache.virtual import check_sources
from pipeline.errors import ActrecError

if TYPE_CHECKING:
    from pipeline.config import Config

FORMAT_VERSION = 1
NAME_BYTES = 255  # fixed-length names: SWMR appends cannot use variable-length strings
REASON_BYTES = 1024
# One-dimensional columns per group; each group's ``count`` says how many rows are committed.
COLUMNS = {"index": {"names": h5py.string_dtype("utf-8", NAME_BYTES), "labels": np.int32, "offsets": np.int64,
                     "lengths": np.int64},
           "failures": {"names": h5py.string_dtype("utf-8", NAME_BYTES),
                        "reasons": h5py.string_dtype("utf-8", REASON_BYTES)}}
# Videos whose decode ended before the frame count their header lists, kept because most frames decoded: name and
# that count.
SHORT_COLUMNS = {"names": h5py.string_dtype("utf-8", NAME_BYTES), "header_frames": np.int64}

log = logging.getLogger(__name__)


def damaged_error(path, what: str) -> ActrecError:
    """The one diagnosis of a damaged cache, whichever command finds it."""
    return ActrecError(f"{path}: the feature cache is damaged ({what}). Delete it and run `actrec embed` again")


def open_error(path, exc: Exception) -> ActrecError:
    if "truncated file" in str(exc):
        return damaged_error(path, "the file is shorter than HDF5 recorded: it was cut off")
    if "already open" in str(exc) or "unable to lock" in str(exc):
        return ActrecError(f"{path}: the HDF5 file is in use elsewhere ({exc}); close the program using it and "
                           f"run again")
    if Path(path).is_dir() or not _starts_like_hdf5(path):
        return ActrecError(f"{path} is not an HDF5 feature cache; point cache.path (or `actrec info`) at a file "
                           f"written by `actrec embed`")
    return damaged_error(path, f"the HDF5 file cannot be read: {str(exc).splitlines()[0][:200]}")


def _starts_like_hdf5(path) -> bool:
    """HDF5's signature at offset 0 (where h5py writes it): tells a damaged cache from some other file."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def _decode(values) -> list[str]:
    return [v.decode("utf-8", errors="ignore") if isinstance(v, bytes) else str(v) for v in values]


def check_layout(f: h5py.File, path) -> None:
    """Refuse a file that lacks the datasets of a cache (or has them in the wrong shape), naming them."""
    expected = {"features": 2, **{f"{group}/{name}": 1 for group, columns in COLUMNS.items()
                                  for name in (*columns, "count")}}
    missing = [name for name in expected if not isinstance(f.get(name), h5py.Dataset)]
    if missing:
        raise damaged_error(path, f"missing {', '.join(missing)}")
    wrong = [f"{name} is {f[name].ndim}-d" for name, ndim in expected.items() if f[name].ndim != ndim]
    wrong += [f"{group}/count is empty" for group in COLUMNS if f[f"{group}/count"].shape[0] < 1]
    if wrong:
        raise damaged_error(path, "; ".join(wrong))


def _check_committed(meta: dict, f: h5py.File, path) -> None:
    """The committed index must point into the stored feature rows with names: else the file lost data."""
    count = len(meta["names"])
    short = [name for name in ("index/names", "index/labels", "index/offsets", "index/lengths")
             if _rows(f, name) < count]
    if short:
        raise damaged_error(path, f"index/count is {count} but {', '.join(short)} hold fewer rows")
    ends = meta["offsets"] + meta["lengths"]
    rows = min(_rows(f, name) for name in ("features", "features_flip") if name in f)
    if count and (ends.max() > rows or (meta["lengths"] <= 0).any() or not all(meta["names"])):
        raise damaged_error(path, f"its index lists {count} videos but their rows are not all stored")


def _fresh(f: h5py.File, name: str) -> h5py.Dataset:
    """A dataset as it is now: a SWMR reader holds the shape it saw first, and a writer may have grown it since."""
    dataset = f[name]
    if f.swmr_mode:
        dataset.refresh()
    return dataset


def _rows(f: h5py.File, name: str) -> int:
    return _fresh(f, name).shape[0]


def _head(f: h5py.File, name: str, count: int) -> np.ndarray:
    """The first ``count`` rows of a column, refreshed (``count`` is read after the rows were written)."""
    return _fresh(f, name)[:count]


def read_meta(f: h5py.File, path) -> dict:
    """Attributes and committed index of an open cache file (its layout checked first)."""
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
            "fps": float(f.attrs["fps"]) if "fps" in f.attrs else None,  # caches written before it say nothing
        }
    except (KeyError, ValueError, TypeError) as exc:
        raise ActrecError(f"{path} is not a feature cache written by `actrec embed` (missing or bad attribute: "
                          f"{exc}). Point cache.path elsewhere or delete the file") from exc
    if version != FORMAT_VERSION:
        raise ActrecError(f"{path} has cache format version {version}; this code reads version {FORMAT_VERSION}. "
                          f"Delete it and run `actrec embed` again")
    check_layout(f, path)
    count = int(f["index/count"][0])
    meta["names"] = _decode(_head(f, "index/names", count))
    meta["labels"] = _head(f, "index/labels", count).astype(np.int64)
    meta["offsets"] = _head(f, "index/offsets", count).astype(np.int64)
    meta["lengths"] = _head(f, "index/lengths", count).astype(np.int64)
    n_failed = int(f["failures/count"][0])
    # A later record for the same name replaces an earlier one; a name that was embedded since is no failure.
    failures = dict(zip(_decode(_head(f, "failures/names", n_failed)), _decode(_head(f, "failures/reasons", n_failed))))
    committed = set(meta["names"])
    meta["failures"] = {name: reason for name, reason in failures.items() if name not in committed}
    meta["failure_rows"] = failures
    meta["short"] = _short_videos(f, committed)
    _check_committed(meta, f, path)
    return meta


def read_checked(f: h5py.File, path) -> dict:
    """``read_meta``, and for a virtual cache the check that its shards are there and are the ones it was joined
    from: what every reader's open goes through. ``sources``: those shards (none for a cache of its own)."""
    meta = read_meta(f, path)
    meta["sources"] = check_sources(f, path)
    return meta


def _short_videos(f: h5py.File, committed: set[str]) -> dict[str, int]:
    """Committed videos that decoded short: name -> the frame count their header lists."""
    n = int(f["short/count"][0])
    rows = zip(_decode(f["short/names"][:n]), f["short/header_frames"][:n].astype(np.int64).tolist())
    return {name: frames for name, frames in rows if name in committed}


def write_attributes(f: h5py.File, fingerprint: dict, class_names: list[str], config: dict, dim: int, dtype: str,
                     fps: float | None) -> None:
    """The attributes every cache file carries (what ``read_meta`` reads back), written into a new file ``f``."""
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
    f.attrs["class_names"] = json.dumps(class_names)
    f.attrs["config"] = json.dumps(config, sort_keys=True, default=str)
    f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    f.attrs["dim"] = dim
    f.attrs["dtype"] = dtype
    if fps:
        f.attrs["fps"] = float(fps)


def committed_frames(meta: dict) -> int:
    if not len(meta["offsets"]):
        return 0
    return int(meta["offsets"][-1] + meta["lengths"][-1])


def open_for_reading(path, chunk_cache_bytes: int | None = None) -> h5py.File:
    """Open read-only in SWMR mode: works while a writer appends, and on a file whose writer was killed.

    ``chunk_cache_bytes`` sizes HDF5's per-dataset chunk cache (None: HDF5's default, 1 MiB).
    """
    _check_not_truncated(path)
    try:
        # HDF5's own file lock would block a resuming writer; writers serialise on WriteLock instead.
        return h5py.File(path, "r", swmr=True, locking=False, rdcc_nbytes=chunk_cache_bytes)
    except (OSError, RuntimeError) as exc:
        raise open_error(path, exc) from exc


def _check_not_truncated(path) -> None:
    """HDF5 checks a file's stored length only when it is opened without SWMR (a SWMR reader retries the missing
    bytes for minutes instead). A file that no writer holds open opens that way: let HDF5 check it."""
    try:
        h5py.File(path, "r", locking=False).close()
    except (OSError, RuntimeError) as exc:
        if "truncated file" in str(exc):
            raise open_error(path, exc) from exc
        # Anything else (a writer holding it, a killed writer's flags, not HDF5 at all) is the SWMR open's to judge.


class FeatureCache:
    """Read side of the cache. Index and attributes load at construction; the feature arrays are opened
    lazily in each process that reads them, so the object pickles into DataLoader workers."""

    def __init__(self, path, expected_fingerprint: dict | None = None, chunk_cache_bytes: int | None = None):
        self.path = Path(path)
        self.chunk_cache_bytes = chunk_cache_bytes
        if not self.path.exists():
            raise ActrecError(f"no feature cache at {self.path}; run `actrec embed` with the same config first")
        with open_for_reading(self.path) as f:
            meta = read_checked(f, self.path)
        if expected_fingerprint is not None:
            differences = fingerprint_differences(meta["fingerprint"], expected_fingerprint)
            if differences:
                raise mismatch_error(self.path, differences)
        self.fingerprint: dict = meta["fingerprint"]
        self.class_names: list[str] = meta["class_names"]
        self.config: dict = meta["config"]
        self.created: str = meta["created"]
        self.dim: int = meta["dim"]
        self.dtype: str = meta["dtype"]
        self.has_flip: bool = meta["has_flip"]
        self.fps: float | None = meta["fps"]  # the videos' typical frame rate (None: not recorded)
        self.names: list[str] = meta["names"]
        self.labels: np.ndarray = meta["labels"]
        self.offsets: np.ndarray = meta["offsets"]
        self.lengths: np.ndarray = meta["lengths"]
        self.failures: dict[str, str] = meta["failures"]
        self.sources: list[str] = meta["sources"]  # a virtual cache's shards, relative to its folder
        self.short: dict[str, int] = meta["short"]  # videos whose decode ended early -> their header's frame count
        self.total_frames = committed_frames(meta)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._memory: dict[bool, np.ndarray] = {}
        self._file = None
        self._file_pid = None

    def settings(self) -> dict:
        """What this cache's features are, in the terms ``compatibility_differences`` compares."""
        return {"fingerprint": self.fingerprint, "class_names": self.class_names, "dim": self.dim,
                "dtype": self.dtype, "has_flip": self.has_flip}

    def __contains__(self, name: str) -> bool:
        return name in self._index

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
            self._file = self._reopen()
            self._file_pid = os.getpid()
        return self._file["features_flip" if flip else "features"]

    def _reopen(self) -> h5py.File:
        """Open the file to read features, and make sure it still holds this reader's videos where its index says:
        a join or a new embed may have replaced it since the index was read (a writer appending is fine)."""
        f = open_for_reading(self.path, self.chunk_cache_bytes)
        try:
            meta = read_checked(f, self.path)
            n = len(self.names)
            same = meta["names"][:n] == self.names and all(np.array_equal(meta[column][:n], getattr(self, column))
                                                            for column in ("labels", "offsets", "lengths"))
            if not same or meta["fingerprint"] != self.fingerprint:
                raise ActrecError(f"{self.path} was replaced while this command was reading it (its videos are no "
                                  f"longer where they were); run the command again")
        except BaseException:
            f.close()
            raise
        return f

    def sequence(self, i: int, flip: bool = False) -> np.ndarray:
        """Features of video ``i``, ``[T, D]`` float32."""
        return np.asarray(self.stored_rows(i, flip), dtype=np.float32)

    def stored_rows(self, i: int, flip: bool = False) -> np.ndarray:
        """Features of video ``i``, ``[T, D]``, in the cache's own dtype (bit for bit what the file holds)."""
        start = int(self.offsets[i])
        return self._dataset(flip)[start:start + int(self.lengths[i])]

    def rows_between(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the whole feature array (every video's frames, stacked), in the cache's dtype."""
        return self._dataset(False)[start:stop]

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

    def load_all(self, flip: bool = True) -> None:
        """Read the feature array (and with ``flip`` the mirrored one) into memory; later reads touch no disk."""
        for mirrored in (False, True) if flip and self.has_flip else (False,):
            if mirrored not in self._memory:
                self._memory[mirrored] = self._dataset(mirrored)[: self.total_frames]
        self.close()

    def place(self, load: str, flip: bool = True) -> str:
        """Read the features into memory when ``load`` says so ('auto': when they fit in a quarter of RAM);
        the mirrored ones too unless ``flip`` is False (a reader that never asks for them).

        Returns where they are now, 'memory' or 'disk'; on disk, each DataLoader worker reads through its own handle.
        """
        if load == "auto":
            load = "memory" if self.nbytes_to_load(flip) <= _total_memory_bytes() // 4 else "disk"
        if load == "memory":
            self.load_all(flip)
        return load

    def nbytes_to_load(self, flip: bool = True) -> int:
        """Size of the committed feature array (with ``flip``, plus the mirrored one) in memory."""
        copies = 2 if flip and self.has_flip else 1
        return self.total_frames * self.dim * np.dtype(self.dtype).itemsize * copies

    @property
    def nbytes(self) -> int:
        """Size of all committed feature arrays in memory."""
        return self.nbytes_to_load(flip=True)

    def close(self) -> None:
        if self._file is not None and self._file_pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = None
        state["_file_pid"] = None
        return state


def _total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 1024 ** 3  # unknown: assume a modest machine


def open_cache(cfg: Config) -> FeatureCache:
    """The feature cache at cache.path for stage two; refused when it was made with other embed settings than
    ``cfg`` (compared on the stored config, so stage two never loads the backbone code)."""
    cache = FeatureCache(cfg.cache.path)
    differences = stage_two_differences(cache.fingerprint, cache.config, cfg.to_dict())
    if differences:
        raise mismatch_error(cache.path, differences)
    return cache


def cache_rows(cache: FeatureCache, items, what: str) -> tuple[list[int], list[int]]:
    """Cache rows and labels of ``items`` (split entries); videos whose embedding failed are left out with a warning."""
    rows, labels, failed = [], [], []
    for item in items:
        if item.name in cache.failures:
            failed.append(item.name)
            continue
        row = cache.index_of(item.name)  # a video missing from the cache is an error that says to embed
        if int(cache.labels[row]) != item.label:
            raise ActrecError(f"{cache.path}: {item.name} has label {int(cache.labels[row])} in the cache but "
                              f"{item.label} in the split files; the cache belongs to another dataset. Re-run "
                              f"`actrec embed` or fix cache.path")
        rows.append(row)
        labels.append(item.label)
    if failed:
        log.warning("%d %s videos failed to embed and are left out (e.g. %s: %s)", len(failed), what, failed[0],
                    cache.failures[failed[0]])
    return rows, labels


def describe_cache(path) -> str:
    """Human-readable summary for ``actrec info``: fingerprint, counts, size, failures."""
    cache = FeatureCache(path)
    size = Path(path).stat().st_size
    lines = [
        f"cache:      {cache.path} ({size / 2**20:.1f} MiB, format {FORMAT_VERSION}, created {cache.created})",
        f"videos:     {len(cache.names)}",
        f"frames:     {cache.total_frames}",
        f"failures:   {len(cache.failures)}",
        f"short:      {len(cache.short)} (decode ended early; the frames that decoded are kept)",
        f"classes:    {len(cache.class_names)}",
        f"features:   {cache.dim}-d {cache.dtype}{' + flip' if cache.has_flip else ''}",
        f"fps:        {cache.fps:g}" if cache.fps else "fps:        not recorded",
    ]
    if len(cache.names):
        lengths = cache.lengths
        lines.append(f"length:     {lengths.min()} to {lengths.max()} frames per video (mean {lengths.mean():.1f})")
    if cache.sources:
        lines.append(f"join:       virtual, features in {len(cache.sources)} shards ({', '.join(cache.sources)})")
    owner = lock_holder(cache.path)
    if owner:
        lines.append(f"status:     being written by pid {owner} (counts grow until it finishes)")
    lines.append("fingerprint:")
    lines += [f"  {key}: {value}" for key, value in sorted(cache.fingerprint.items())]
    if cache.short:
        lines.append("short videos (frames kept of the header's count):")
        lines += [f"  {name}: {cache.lengths[cache.index_of(name)]} of {frames}"
                  for name, frames in sorted(cache.short.items())]
    if cache.failures:
        lines.append("failed videos:")
        lines += [f"  {name}: {reason}" for name, reason in sorted(cache.failures.items())]
    return "\n".join(lines)
