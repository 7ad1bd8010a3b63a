"""A virtual cache's shards: the files it reads, each one's identity recorded at the join, checked at every open.

A cache joined with ``cache.join: virtual`` holds the index; its feature arrays are HDF5 virtual datasets over
the shards. HDF5 reads a missing source file as zeros without a word, so every open checks that each source
file is there and, for caches that recorded it at the join (attribute ``shards``), that it is the shard it
was joined from. The identity is the shard's creation stamp and a digest of its fingerprint and of the index
rows the join found in it. Those rows never change while the shard lives (a writer only appends, and its
recovery copies them as they were), so a shard that a later embed extended is still the same shard; its size
is therefore not part of the identity. Caches joined before the identity was recorded are checked for the
files' presence only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import ActrecError

SHARDS_ATTR = "shards"  # JSON: {source file name as the virtual datasets store it: identity}
INDEX_COLUMNS = ("names", "labels", "offsets", "lengths")


def identity(shard: Path, videos: int | None = None) -> dict:
    """The shard's creation stamp, and a digest of its fingerprint and of its first ``videos`` index rows (all
    committed rows by default). Raises OSError, KeyError or ValueError for a file that is no readable cache."""
    with _open(shard) as f:
        committed = int(f["index/count"][0])
        count = committed if videos is None else videos
        if count > committed:
            raise ValueError(f"it holds {committed} videos, the join took {count}")
        digest = hashlib.sha256(str(f.attrs["fingerprint"]).encode("utf-8"))
        for column in INDEX_COLUMNS:
            digest.update(np.ascontiguousarray(f[f"index/{column}"][:count]).tobytes())
        return {"created": str(f.attrs["created"]), "videos": count, "index_sha256": digest.hexdigest()}


def _open(shard: Path) -> h5py.File:
    """Open read-only as HDF5 reads a virtual source, which checks the file's length (a shard cut off by a
    copy is refused, where a SWMR reader waits minutes for the missing bytes); in SWMR mode while an embed
    appends to it, which only a SWMR reader may open."""
    try:
        return h5py.File(shard, "r", locking=False)
    except OSError as exc:
        if "truncated file" in str(exc):
            raise
        return h5py.File(shard, "r", swmr=True, locking=False)


def source_names(f: h5py.File) -> list[str]:
    """The source file names of an open cache's virtual feature arrays, as stored (relative to its folder)."""
    names = set()
    for dataset in ("features", "features_flip"):
        if dataset in f and f[dataset].is_virtual:
            plist = f[dataset].id.get_create_plist()  # one mapping per run of rows: thousands, read them cheaply
            names.update(plist.get_virtual_filename(i) for i in range(plist.get_virtual_count()))
    return sorted(names)


def record(f: h5py.File, identities: dict[str, dict]) -> None:
    """Store the identity of each source (name as the virtual datasets store it) in a cache being joined."""
    f.attrs[SHARDS_ATTR] = json.dumps(identities, sort_keys=True)


def recorded(f: h5py.File) -> dict[str, dict]:
    """The identities a join recorded (none in a cache of its own, or one joined before they were recorded)."""
    return json.loads(f.attrs[SHARDS_ATTR]) if SHARDS_ATTR in f.attrs else {}


def check_sources(f: h5py.File, cache_path) -> list[str]:
    """Refuse a virtual cache whose source files are missing or are not the shards it was joined from; return
    their names (relative to the cache's folder), none for a cache of its own."""
    identities = recorded(f)
    folder = Path(cache_path).parent
    names = sorted(identities) or source_names(f)  # the join records every source it wrote
    for name in names:
        shard = folder / name  # HDF5 looks for a relative source in the cache's folder
        if not shard.is_file():
            raise ActrecError(f"{cache_path} reads its features from the shard {shard}, which is missing; put it "
                              f"back, or delete {cache_path} and run `actrec embed` again (it embeds what the "
                              f"remaining shards lack)")
        if name in identities:
            why = _differs(shard, identities[name])
            if why:
                raise ActrecError(f"{cache_path} reads its features from the shard {shard}, but that file is not the "
                                  f"shard it was joined from ({why}); put the right one back, or delete {cache_path} "
                                  f"and run `actrec embed` again")
    return names


def _differs(shard: Path, expected: dict) -> str:
    """Why ``shard`` is not the file described by ``expected`` ('' when it is)."""
    try:
        found = identity(shard, expected["videos"])
    except (OSError, KeyError, ValueError) as exc:
        return f"cannot read it as that shard: {str(exc).splitlines()[0][:200]}"
    if found["created"] != expected["created"]:
        return f"created {found['created']}, the joined one {expected['created']}"
    if found != expected:
        return f"its first {expected['videos']} videos or its fingerprint differ"
    return ""
