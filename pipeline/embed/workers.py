"""Decoding for stage one: worker processes turn videos into resized uint8 chunks, handed over in video order.

The workers can start before the list and the preprocessing are known (``DecodePool``), so their start (a fresh
interpreter importing OpenCV and torch, whose uint8 resize is the weights' own) overlaps the main process's
imports and the backbone's loading; importing this module imports no torch.
Worker ``w`` of ``W`` decodes videos ``w, w + W, w + 2W, ...`` (one OpenCV thread, one torch thread
each), streaming every video as chunks of at most ``chunk`` frames already resized to ``img_dim``
into its own bounded queue. The consumer reads video ``k`` from worker ``k mod W``'s queue, so the
pieces come out in the order of the list whatever the workers' speeds, and memory holds at most
``W x depth`` chunks whatever a video's length. Chunks travel as torch tensors in shared memory.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue as queue_module
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pipeline.embed.resize import FrameResize, resized_chunks
from pipeline.errors import ActrecError
from pipeline.inputs.video import DecodeError, iter_frames_dir, iter_video_frames

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

QUEUE_DEPTH = 4      # chunks a worker may have ready before it waits for the consumer
POLL_SECONDS = 5.0   # how often a waiting consumer checks that the worker it waits for is alive


@dataclass
class Piece:
    """Part of video ``index``: ``frames`` uint8 ``[n, 3, img_dim, img_dim]``; or, with ``end``, the close of the
    video, with ``reason`` saying why decoding failed ('' when it did not; a failure may follow frames) and
    ``header_frames`` the count its header lists when the decode ended before it but the frames are kept."""
    index: int
    frames: torch.Tensor | None = None
    end: bool = False
    reason: str = ""
    header_frames: int | None = None


@dataclass
class _Crash:
    """A worker's unexpected exception (not a decode failure), with its traceback text."""
    worker: int
    text: str


def auto_workers(local_world_size: int = 1) -> int:
    """``embed.workers: auto``: the usable cores (CPU affinity) shared by the ranks of this machine, minus one
    for the process that batches and feeds the model; at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_world_size) - 1)


def resolve_workers(value, local_world_size: int = 1) -> int:
    return auto_workers(local_world_size) if value == "auto" else int(value)


def video_pieces(index: int, source: str, path: Path, resize, chunk: int) -> Iterator[Piece]:
    """The pieces of one video (decoded and resized as they stream), closed by an ``end`` piece."""
    short: list[int] = []  # the header's frame count, when the decode ends early but keeps its frames
    frames = (iter_frames_dir(path) if source == "frames"
              else iter_video_frames(path, lambda _, n: short.append(n), threads=1))
    try:
        for chunk_frames in resized_chunks(frames, resize, chunk):
            yield Piece(index, chunk_frames)
    except DecodeError as exc:
        yield Piece(index, end=True, reason=str(exc))
        return
    yield Piece(index, end=True, header_frames=short[0] if short else None)


def pieces(jobs: list[tuple[str, Path]], resize, chunk: int, workers: int,
           pool: DecodePool | None = None) -> Iterator[Piece]:
    """Pieces of every job ``(source, path)`` in list order, decoded in ``workers`` processes (0: in this one).

    ``resize``: a ``resize.FrameResize`` (or an int: squash to that size). ``pool``: worker processes started
    earlier with ``DecodePool`` (then ``chunk`` and ``workers`` are the pool's); it is closed here."""
    if pool is None and (workers == 0 or not jobs):
        for index, (source, path) in enumerate(jobs):
            yield from video_pieces(index, source, path, resize, chunk)
        return
    pool = pool or DecodePool(chunk, min(workers, len(jobs)))
    try:
        yield from pool.pieces(jobs, resize)
    finally:
        pool.close()


def _work(worker: int, workers: int, chunk: int, inbox, out, stop) -> None:
    """A worker process: import what decoding needs, wait for its jobs (every ``workers``-th of the list, from
    ``worker``) and their preprocessing, decode them in order into ``out``, then stay until ``stop``: the consumer
    fetches each chunk's shared memory from this process, so it must outlive the last chunk's reception. A worker
    whose parent died (``kill -9``, torchrun stopping a rank) exits instead of waiting forever."""
    import cv2
    import torch  # torch's antialiased uint8 resize; it also registers how tensors travel in shared memory

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    parent = os.getppid()
    try:
        jobs, resize = _get(inbox, parent, stop) or ([], None)
        for k, (source, path) in enumerate(jobs):
            for piece in video_pieces(worker + k * workers, source, path, resize, chunk):
                _put(out, piece, parent)
    except BaseException:
        _put(out, _Crash(worker, traceback.format_exc()), parent)
    while not stop.wait(POLL_SECONDS / 5):
        _exit_if_orphaned(parent)


def _get(inbox, parent: int, stop):
    """The job list and the preprocessing sent to this worker (None when the pool closes before sending them)."""
    while not stop.is_set():
        try:
            return inbox.get(timeout=POLL_SECONDS / 5)
        except queue_module.Empty:
            _exit_if_orphaned(parent)
    return None


def _put(out, item, parent: int) -> None:
    while True:
        try:
            out.put(item, timeout=POLL_SECONDS / 5)
            return
        except queue_module.Full:
            _exit_if_orphaned(parent)


def _exit_if_orphaned(parent: int) -> None:
    if os.getppid() != parent:
        os._exit(0)


def _context():
    # spawn: each worker is a fresh interpreter and a direct child of this process. A fork of this process could
    # inherit a lock another of its threads (queue feeders, tqdm, OpenMP, HDF5) holds at that moment and wait on
    # it forever; a forkserver's workers would be the server's children, so they could not tell when this process
    # is killed (their parent, the server, lives on) and would keep the rank's output pipes open. Tensors travel
    # through these queues in shared memory once torch is imported (it registers its reductions on import).
    return multiprocessing.get_context("spawn")


class DecodePool:
    """``workers`` decode processes, each with its own bounded queue, started before their jobs are known: a
    spawned worker spends seconds importing torch and OpenCV, which then overlaps the main process's own imports
    and the backbone's loading. ``pieces(jobs, resize)`` hands each worker its share and yields every piece in
    list order."""

    def __init__(self, chunk: int, workers: int):
        context = _context()
        self.jobs: list = []
        self.queues = [context.Queue(maxsize=QUEUE_DEPTH) for _ in range(workers)]
        self.inboxes = [context.Queue(maxsize=1) for _ in range(workers)]
        self.stop = context.Event()
        self.closed = False
        self.processes = [context.Process(target=_work, args=(w, workers, chunk, inbox, q, self.stop),
                                          name=f"actrec-decode-{w}", daemon=True)
                          for w, (q, inbox) in enumerate(zip(self.queues, self.inboxes))]
        for process in self.processes:
            process.start()

    def pieces(self, jobs: list[tuple[str, Path]], resize: FrameResize | int) -> Iterator[Piece]:
        """Every piece of ``jobs`` in list order, resized as ``resize`` says (a pool serves one job list)."""
        self.jobs = jobs
        for w, inbox in enumerate(self.inboxes):
            inbox.put((jobs[w::len(self.inboxes)], resize))
        return iter(self)

    def __iter__(self) -> Iterator[Piece]:
        for index in range(len(self.jobs)):
            while True:
                piece = self._next(index % len(self.queues))
                yield piece
                if piece.end:
                    break

    def _next(self, worker: int) -> Piece:
        while True:
            try:
                item = self.queues[worker].get(timeout=POLL_SECONDS)
            except queue_module.Empty:
                process = self.processes[worker]
                if not process.is_alive():
                    raise ActrecError(f"decode worker {worker} died (exit code {process.exitcode}; killed for "
                                      f"memory?); lower embed.workers or embed.batch_size and run again") from None
                continue
            if isinstance(item, _Crash):
                raise RuntimeError(f"decode worker {item.worker} failed:\n{item.text}")
            return item

    def close(self) -> None:
        """Stop the workers (they only read; nothing of theirs needs finishing) and release the queues. Safe to
        call twice: a second ``stop.set()`` after a worker was terminated inside ``stop.wait`` would wait forever
        on the lock that worker held, so the first call lets idle workers leave on their own before terminating
        the busy ones, and later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        deadline = time.monotonic() + 2 * POLL_SECONDS / 5  # idle workers see the stop within POLL_SECONDS / 5
        for process in self.processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()  # busy decoding or blocked on a full queue: only reads, safe to stop
        for process in self.processes:
            process.join(timeout=10)
        for q in self.queues + self.inboxes:
            q.cancel_join_thread()
            q.close()
