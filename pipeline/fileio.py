"""Small file helpers every stage shares: atomic writes and file hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temp path in the folder of ``path``; on success fsync it and rename it onto ``path``.

    What a reader can rely on: ``path`` is the old file or the complete new one, never half of one, whatever
    happens mid-write (an exception, Ctrl-C, a full disk, a kill). On failure the temp file is removed and
    ``path`` is untouched. The temp name keeps the suffix, so writers that pick a format by it still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through ``atomic_path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def write_json(path: str | Path, data) -> None:
    """Atomically, indented, with NaN and infinities written as null (JSON has none)."""
    write_atomic(path, json.dumps(_json_safe(data), indent=2) + "\n")


def _json_safe(value):
    if isinstance(value, dict):
        return {key: _json_safe(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def sha256_file(path: str | Path, progress: bool = False) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (with a progress bar for big downloads)."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, desc=f"sha256 {path.name}", unit="B",
                                     unit_scale=True, unit_divisor=1024, leave=False, disable=not progress) as bar:
        while block := f.read(CHUNK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()
