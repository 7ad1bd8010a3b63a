"""Shards of a feature cache written by several ranks, and joining them into the one cache in canonical order.

Under torchrun each rank writes its share of the videos to its own crash-safe cache file, a shard,
in ``<cache>.shards/rank0003-of-0004.h5`` (same writer, same lock, same resume as the cache itself).
Once every shard is complete, ``join`` writes ``cache.path`` with the videos in the canonical order
(sorted by name, the order one process writes), either as a copy (the shards are then removed) or
as an HDF5 virtual dataset over the shards (no copy; the shards must stay). Features are copied
as stored, so the joined cache equals the one a single process writes, bit for bit, whenever the
backbone's output for a frame does not depend on the other frames of its batch (see embed/run.py).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np

from pipeline.cache.fingerprint import compatibility_differences
from pipeline.cache.lock import WriteLock, lock_holder
from pipeline.cache.reader import COLUMNS, SHORT_COLUMNS, FeatureCache, write_attributes
from pipeline.cache.virtual import identity, record
from pipeline.cache.writer import FeatureCacheWriter
from pipeline.errors import ActrecError

log = logging.getLogger(__name__)

_SHARD_NAME = re.compile(r"rank(\d{4})-of-(\d{4})\.h5")
JOIN_MODES = ("copy", "virtual")


def shard_dir(cache_path) -> Path:
    return Path(str(cache_path) + ".shards")


def shard_path(cache_path, rank: int, world_size: int) -> Path:
    return shard_dir(cache_path) / f"rank{rank:04d}-of-{world_size:04d}.h5"


def shard_files(cache_path) -> list[Path]:
    """The shard files next to ``cache_path``, of any world size, in name order.

    A shards folder holding anything else is refused, naming it: the join would leave it out without a word
    (and a copy join, which removes the folder, would delete it)."""
    folder = shard_dir(cache_path)
    if not folder.is_dir():
        return []
    entries = sorted(folder.iterdir())
    # Hidden files are the file system's (NFS keeps .nfsXXXX for files deleted while open), not a user's.
    stray = [p.name for p in entries if not p.name.startswith(".") and not _ours(p.name)]
    if stray:
        more = f" and {len(stray) - 1} more" if len(stray) > 1 else ""
        raise ActrecError(f"{folder} holds {stray[0]}{more}, which is not a shard of {cache_path} "
                          f"(rankRRRR-of-WWWW.h5, RRRR < WWWW); move it out of {folder}, then run again")
    return [p for p in entries if _is_shard(p.name)]


# The files a shard's writer keeps or may leave next to it (lock.py, writer.py): the lock, the holder's pid, the
# reserve, and the temporary files of a creation or a recovery.
WRITER_SUFFIXES = (".lock", ".lock.pid", ".lock.pid.tmp", ".reserve", ".tmp", ".recovered", ".recovered.tmp")


def _is_shard(name: str) -> bool:
    match = _SHARD_NAME.fullmatch(name)
    return bool(match) and int(match.group(1)) < int(match.group(2))


def _ours(name: str) -> bool:
    """A shard, or a file its writer keeps or leaves next to it."""
    return _is_shard(name) or any(name.endswith(suffix) and _is_shard(name[:-len(suffix)])
                                  for suffix in WRITER_SUFFIXES)


def world_sizes(cache_path) -> set[int]:
    """The world sizes the existing shards were written with."""
    return {int(_SHARD_NAME.fullmatch(p.name).group(2)) for p in shard_files(cache_path)}


def committed_names(cache_path, fingerprint: dict | None = None) -> set[str]:
    """Names committed in the cache and in every shard (of any world size): what no rank has to embed again.

    With ``fingerprint``, a cache or shard made with other settings is refused, naming it; the device it was
    made on is the join's to judge (shards of several machines may differ in it: ``--mixed-devices``)."""
    expected = None if fingerprint is None else {k: v for k, v in fingerprint.items() if k != "device"}
    names = set()
    for path in ([Path(cache_path)] if Path(cache_path).exists() else []) + shard_files(cache_path):
        names.update(FeatureCache(path, expected_fingerprint=expected).names)
    return names


def _sources(cache_path: Path, mode: str) -> list[FeatureCache]:
    """Readers of everything the join takes from: the existing cache (unless it is replaced by a virtual join
    that must not point at itself) and the shards."""
    shards = shard_files(cache_path)
    if not shards:
        raise ActrecError(f"{cache_path}: no shards in {shard_dir(cache_path)}; nothing to join (`actrec embed` "
                          f"under torchrun writes them)")
    for shard in shards:
        owner = lock_holder(shard)
        if owner:
            raise ActrecError(f"{shard} is being written by pid {owner}; join after every rank has finished")
    if not cache_path.exists():
        return [FeatureCache(path) for path in shards]
    # Read even when a virtual join replaces it: one whose shards are missing is refused by name, where joining
    # what is left would drop their videos without a word.
    current = FeatureCache(cache_path)
    if mode == "virtual" and not current.sources:
        raise ActrecError(f"{cache_path} holds features of its own; a virtual join can only point at shards. "
                          f"Join with cache.join=copy, or move it to {shard_path(cache_path, 0, 1)} (if that "
                          f"name is free) and join again")
    return ([current] if mode == "copy" else []) + [FeatureCache(path) for path in shards]


def _check_same(cache_path: Path, sources: list[FeatureCache], mixed_devices: bool) -> None:
    """Refuse sources made with other settings than one another: one cache never mixes features. Devices may
    differ when ``mixed_devices`` says so. Every pair is compared: a source written before devices were recorded
    matches any, so two that record different ones may both match a third."""
    for i, other in enumerate(sources):
        for earlier in sources[:i]:
            _check_pair(cache_path, earlier, other, mixed_devices)


def _check_pair(cache_path: Path, earlier: FeatureCache, other: FeatureCache, mixed_devices: bool) -> None:
    """Refuse ``other`` if its features may not sit in one cache with ``earlier``'s, naming both."""
    differences = compatibility_differences(earlier.settings(), other.settings(),
                                            (f"{earlier.path.name} has", f"{other.path.name} has"),
                                            ignore={"device"} if mixed_devices else set())
    if differences and all(line.startswith("device:") for line in differences):
        raise ActrecError(f"{other.path} was embedded on another kind of device than {earlier.path} "
                          f"({'; '.join(differences)}), so their features may differ in the last bits. Join "
                          f"them anyway with `actrec merge-cache {cache_path} --mixed-devices` (the cache then "
                          f"records every device) or embed again on one kind of device")
    if differences:
        raise ActrecError(f"{other.path} was made with other settings than {earlier.path} "
                          f"({'; '.join(differences)}); delete the one that is wrong and run `actrec embed` "
                          f"again")


def _devices(fingerprint: dict) -> list[str]:
    """The devices a fingerprint records: none (written before they were), one, or the list of a mixed join."""
    device = fingerprint.get("device")
    return [] if device is None else list(device) if isinstance(device, list) else [device]


def _joined_fingerprint(sources: list[FeatureCache]) -> dict:
    """The first source's fingerprint, with every device when the sources were embedded on several."""
    fingerprint = dict(sources[0].fingerprint)
    devices = sorted({device for source in sources for device in _devices(source.fingerprint)})
    if len(devices) > 1:
        fingerprint["device"] = devices
    return fingerprint


def join(cache_path, mode: str = "copy", locked: bool = False, mixed_devices: bool = False) -> dict:
    """Write ``cache_path`` from the shards (and what it held), videos sorted by name; return the counts.

    ``locked``: the caller already holds the cache's write lock (the embed's rank 0 does). ``mixed_devices``:
    join shards embedded on different kinds of device (refused otherwise)."""
    if mode not in JOIN_MODES:
        raise ActrecError(f"cache.join={mode!r}: use one of {', '.join(JOIN_MODES)}")
    cache_path = Path(cache_path)
    lock = None if locked else WriteLock(cache_path)
    if lock:
        lock.acquire()
    try:
        sources = _sources(cache_path, mode)
        shard_paths = [source.path for source in sources if source.path != cache_path]
        _check_same(cache_path, sources, mixed_devices)
        where = {}
        for source in sources:
            for row, name in enumerate(source.names):
                where.setdefault(name, (source, row))  # a video in two sources has the same features in both
        failures = {name: reason for source in sources for name, reason in source.failures.items()
                    if name not in where}
        names = sorted(where)
        tmp = cache_path.with_name(cache_path.name + ".joining")
        tmp.unlink(missing_ok=True)  # left by a join that was killed
        write = _write_copy if mode == "copy" else _write_virtual
        write(tmp, sources[0], _joined_fingerprint(sources), names, where, failures)
        os.replace(tmp, cache_path)
        for leftover in (Path(str(tmp) + ".lock"), Path(str(tmp) + ".lock.pid")):
            leftover.unlink(missing_ok=True)
        if mode == "copy":
            for source in sources:
                source.close()
            shutil.rmtree(shard_dir(cache_path))
    finally:
        if lock:
            lock.release()
    frames = int(sum(where[name][0].lengths[where[name][1]] for name in names))
    log.info("joined %d shards%s into %s (%s): %d videos, %d frames, %d failed", len(shard_paths),
             " and what the cache held" if len(sources) > len(shard_paths) else "", cache_path, mode, len(names),
             frames, len(failures))
    return {"videos": len(names), "frames": frames, "failed": len(failures), "mode": mode, "cache": str(cache_path)}


def _write_copy(tmp: Path, first: FeatureCache, fingerprint: dict, names: list[str], where: dict,
                failures: dict) -> None:
    """Copy every video's stored features (no dtype round trip changes them: float16 -> float32 -> float16)."""
    with FeatureCacheWriter(tmp, fingerprint, first.class_names, first.dim, flip=first.has_flip,
                            dtype=first.dtype, config=first.config, fps=first.fps) as writer:
        for name in names:
            source, row = where[name]
            flip = source.sequence(row, flip=True) if first.has_flip else None
            writer.add(name, int(source.labels[row]), source.sequence(row), flip, source.short.get(name))
        for name, reason in sorted(failures.items()):
            writer.add_failure(name, reason)


def _runs(names: list[str], where: dict) -> list[tuple[FeatureCache, int, int, int]]:
    """(source, source start, target start, rows) for each run of consecutive rows taken from one source."""
    runs, target = [], 0
    for name in names:
        source, row = where[name]
        start, length = int(source.offsets[row]), int(source.lengths[row])
        last = runs[-1] if runs else None
        if last and last[0] is source and last[1] + last[3] == start:
            runs[-1] = (source, last[1], last[2], last[3] + length)
        else:
            runs.append((source, start, target, length))
        target += length
    return runs


def _write_virtual(tmp: Path, first: FeatureCache, fingerprint: dict, names: list[str], where: dict,
                   failures: dict) -> None:
    """A cache file whose index is real and whose feature arrays are virtual datasets over the shards."""
    for source in {id(where[n][0]): where[n][0] for n in names}.values():
        try:
            h5py.File(source.path, "r", locking=False).close()
        except OSError as exc:  # HDF5 reads virtual sources without SWMR: a killed writer's file is refused
            raise ActrecError(f"{source.path} was not closed cleanly ({exc}); run `actrec embed` again to recover "
                              f"it, or join with cache.join=copy") from exc
    runs = _runs(names, where)
    total = sum(run[3] for run in runs)
    # A path relative to the cache's folder: HDF5 looks there, so the folder can move as a whole.
    relative = {id(source): os.path.relpath(source.path, tmp.parent) for source, *_ in runs}
    with h5py.File(tmp, "w", libver="latest", locking=False) as f:
        write_attributes(f, fingerprint, first.class_names, first.config, first.dim, first.dtype, first.fps)
        record(f, {relative[id(source)]: identity(source.path, len(source.names)) for source, *_ in runs})
        for dataset in ["features", "features_flip"] if first.has_flip else ["features"]:
            layout = h5py.VirtualLayout((total, first.dim), dtype=first.dtype)
            for source, start, target, rows in runs:
                virtual = h5py.VirtualSource(relative[id(source)], dataset, shape=(source.total_frames, first.dim))
                layout[target:target + rows] = virtual[start:start + rows]
            f.create_virtual_dataset(dataset, layout)
        offsets = np.cumsum([0] + [int(where[n][0].lengths[where[n][1]]) for n in names])[:-1]
        index = {"names": [n.encode("utf-8") for n in names],
                 "labels": [int(where[n][0].labels[where[n][1]]) for n in names], "offsets": offsets,
                 "lengths": [int(where[n][0].lengths[where[n][1]]) for n in names]}
        failed = sorted(failures.items())
        short = [(n, where[n][0].short[n]) for n in names if n in where[n][0].short]
        columns = {"index": index, "failures": {"names": [n.encode("utf-8") for n, _ in failed],
                                                "reasons": [r.encode("utf-8") for _, r in failed]},
                   "short": {"names": [n.encode("utf-8") for n, _ in short], "header_frames": [h for _, h in short]}}
        for group, values in columns.items():
            for column, dtype in {**COLUMNS, "short": SHORT_COLUMNS}[group].items():
                data = np.asarray(values[column], dtype=dtype) if len(values[column]) else np.zeros(0, dtype)
                f.create_dataset(f"{group}/{column}", data=data, maxshape=(None,), chunks=(1024,), dtype=dtype)
            f.create_dataset(f"{group}/count", data=np.array([len(values["names"])], np.int64))
