"""One embed writes a cache at a time: a kernel lock next to the cache, and the holder's pid for messages.

The lock is ``filelock.FileLock`` on ``<cache>.lock`` (``flock``): the kernel drops it when the holder
exits or is killed, even by ``kill -9``, so it never goes stale. The lock file itself stays in place
(waiters must lock the same inode). The holder also writes its pid to ``<cache>.lock.pid``, only to
name it in the refusal and in ``actrec info``; a pid file left by a killed writer is overwritten by
the next one and, naming a dead process, is ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import filelock

from pipeline.errors import ActrecError


class WriteLock:
    """The single-writer lock of one cache: ``acquire`` refuses at once, naming the holder, if another holds it."""

    def __init__(self, cache_path: Path):
        self.cache_path = cache_path
        self._lock = filelock.FileLock(str(cache_path) + ".lock")

    def acquire(self) -> None:
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout as exc:
            raise ActrecError(f"another embed is writing {self.cache_path} (pid {lock_holder(self.cache_path) or '?'})"
                              f"; wait for it to finish or stop it, then run again") from exc
        try:
            _write_pid(self.cache_path)
        except BaseException:
            self._lock.release()
            raise

    def release(self) -> None:
        if self._lock.is_locked:
            _pid_path(self.cache_path).unlink(missing_ok=True)
            self._lock.release()


def _write_pid(cache_path) -> None:
    """Record this process as the holder; a killed writer's pid file is simply overwritten."""
    pid_path = _pid_path(cache_path)
    tmp = pid_path.with_name(pid_path.name + ".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, pid_path)  # readers never see a half-written pid


def _pid_path(cache_path) -> Path:
    return Path(str(cache_path) + ".lock.pid")


def lock_holder(cache_path) -> int | None:
    """Pid of the embed writing ``cache_path``, as its pid file says, if that process is alive."""
    try:
        pid = int(_pid_path(cache_path).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # left by a writer that was killed
    except PermissionError:
        pass  # alive, another user's
    return pid
