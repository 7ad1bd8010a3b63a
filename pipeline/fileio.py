"""Small file helpers every stage shares: atomic writes, write-failure messages, file hashes and safe names."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from pipeline.errors import ActrecError

CHUNK = 1 << 20
# Libraries that do their own I/O report a failed write in their own words: HDF5 puts the errno in its message,
# torch.save (given a path) and OpenCV only say that writing failed.
_ERRNO_IN_MESSAGE = re.compile(r"errno = (\d+)")
_WRITE_FAILED = ("file write failed", "inline_container", "iostream error", "write failed", "Can't write")
# A name that becomes a folder (a sweep, a tune study): one path component, portable, never '.' or '..'.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def _errno_of(exc: BaseException) -> int | None:
    """The OS error number behind ``exc``, looking through chained exceptions and library messages."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        match = _ERRNO_IN_MESSAGE.search(str(exc))
        if match:
            return int(match[1])
        exc = exc.__cause__ or exc.__context__
    return None


def _disk_full(path: Path) -> bool:
    """Whether the file system holding ``path`` has (next to) no space left."""
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free < CHUNK
    except OSError:
        return False


def write_error(path: str | Path, exc: BaseException) -> ActrecError | None:
    """The one-line error for a failed write to ``path`` (full disk, read-only or forbidden folder), or None when
    ``exc`` is not a write failure the user can fix.

    Every writer of the project reports through this function, so a full disk reads the same everywhere.
    """
    path = Path(path)
    code = _errno_of(exc)
    if code is None and any(text in str(exc) for text in _WRITE_FAILED) and _disk_full(path):
        code = errno.ENOSPC
    if code in (errno.ENOSPC, errno.EDQUOT):
        return ActrecError(f"no space left on device writing {path}; free space and run the command again to resume")
    if code == errno.EROFS:
        return ActrecError(f"cannot write {path}: the file system is read-only; choose a writable location")
    if code in (errno.EACCES, errno.EPERM):
        return ActrecError(f"cannot write {path}: permission denied; choose a writable location or fix its "
                           f"permissions")
    if code == errno.EFBIG:
        return ActrecError(f"cannot write {path}: the file is too large for its file system; choose another disk")
    return None


def incomplete_write(path: str | Path, detail: str) -> ActrecError:
    """The error for a writer that only says it failed (OpenCV): a full disk if the disk is full, else ``detail``."""
    return write_error(path, OSError(errno.ENOSPC, detail)) if _disk_full(Path(path)) else ActrecError(
        f"writing {path} failed: {detail}; check the disk and the folder, then run the command again")


@contextlib.contextmanager
def reporting_write_errors(path: str | Path) -> Iterator[None]:
    """Turn a write failure inside the block into ``write_error(path, ...)``; anything else passes through."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        error = write_error(path, exc)
        if error is None:
            raise
        raise error from exc


def check_writable(path: str | Path) -> None:
    """Refuse, before any work, an output ``path`` whose folder cannot be created or written to."""
    path = Path(path)
    if path.is_dir():
        raise ActrecError(f"{path} is a folder; give a file name")
    with reporting_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # A real write: permission bits and os.access say nothing about read-only mounts (or about root).
        probe = path.with_name(f".{path.name}.probe")
        try:
            probe.write_bytes(b"")
        finally:
            probe.unlink(missing_ok=True)


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
CONFIG_SUFFIXES = (".yaml", ".yml")
CHECKPOINTS_DIR = "checkpoints"  # a run dir's checkpoints folder (last.pt, best.pt)


def check_output(path: str | Path, option: str, suffixes: tuple[str, ...] | None = None,
                 replaces: str | None = None) -> Path:
    """The one guard of every output path a user names (``option``, e.g. '--json'), before any work: refuses a
    name without one of ``suffixes``, an existing checkpoint, feature cache or config (through links, and by
    content too: a hard link or a renamed file), anything inside a run's checkpoints folder, and a folder that
    cannot be written. ``replaces``: the one kind of file the command rewrites by design (a cache's join
    rewrites 'a feature cache'). Returns the path."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ActrecError(f"{option} {path}: give a name ending in {' or '.join(suffixes)}")
    target = path.resolve()
    made = made_by_the_pipeline(target)
    if made and made != replaces:
        raise ActrecError(f"{option} {path} is {made}; writing it would destroy it. Choose another name")
    if in_checkpoints_folder(target):
        raise ActrecError(f"{option} {path} lies in a run's checkpoints folder ({target.parent}), which only "
                          f"training writes; choose another folder")
    check_writable(path)
    return path


def made_by_the_pipeline(path: Path) -> str | None:
    """What ``path`` is when it is an existing checkpoint, feature cache or config (else None)."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(len(HDF5_SIGNATURE))
    except OSError:
        head = b""
    if head == HDF5_SIGNATURE or path.suffix.lower() in (".h5", ".hdf5"):
        return "a feature cache"
    if path.suffix.lower() in CHECKPOINT_SUFFIXES or _is_torch_file(path, head):
        return "a checkpoint"
    if path.suffix.lower() in CONFIG_SUFFIXES:
        return "a config"
    return None


def _is_torch_file(path: Path, head: bytes) -> bool:
    """torch.save's zip format (an archive holding data.pkl), whatever the file's name."""
    import zipfile

    if not head.startswith(b"PK"):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def in_checkpoints_folder(path: Path) -> bool:
    """Whether ``path`` lies in a run dir's checkpoints folder (its run dir has config.yaml, or it holds a
    checkpoint)."""
    folder = path.parent
    if folder.name != CHECKPOINTS_DIR:
        return False
    return (folder.parent / "config.yaml").is_file() or any(
        p.suffix in CHECKPOINT_SUFFIXES for p in folder.glob("*") if p.is_file())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temp path in the folder of ``path``; on success fsync it and rename it onto ``path``.

    What a reader can rely on: ``path`` is the old file or the complete new one, never half of one, whatever
    happens mid-write (an exception, Ctrl-C, a full disk, a kill). On failure the temp file is removed and
    ``path`` is untouched; a full disk or an unwritable folder becomes one ``write_error`` line. The temp name
    keeps the suffix, so writers that pick a format by it still work.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        with reporting_write_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
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


def read_json_object(path: str | Path) -> dict:
    """The JSON object in ``path``, or {} when the file is missing, unreadable, cut short or not an object: for
    records a later run rewrites (run summaries, tracking ids), where a broken one counts as absent."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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


def safe_name(value: str, what: str) -> str:
    """``value`` when it is one safe folder name (letters, digits, '-', '_', '.'; not '.' or '..'; at most 200
    characters), else one error line naming ``what`` (e.g. '--name'). Every name that becomes a folder is
    checked here before anything is written, so none escapes the folder it belongs in."""
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value) or value in (".", ".."):
        raise ActrecError(f"{what} {value!r}: a name must be one folder name of letters, digits, '-', '_' and '.' "
                          f"(not '.' or '..', at most 200 characters); choose another")
    return value
