"""Feeding the backbone: pieces -> fixed-shape batches -> the model, with the copies kept off the critical path.

Batches are packed straight into (on CUDA, pinned) host buffers of one shape, ``[batch_size, 3, d, d]``
uint8 channels_last, zero-padded at the end, and span video boundaries. On CUDA the batch is uploaded
once (``non_blocking`` from pinned memory), the mirrored pass flips the uploaded batch on the device,
and the features come back through a ``non_blocking`` copy into pinned memory that is waited for only
one batch later, so the copy of batch k overlaps the forward of batch k+1. On the CPU the same calls
run synchronously. Pinned buffers come from torch's caching host allocator, which does not hand a
buffer out again before the copies recorded on it are done. Normalisation (the backbone card's
mean/std) happens on the device, after the uint8 upload. ``check_storable`` stops features the
cache's storage dtype cannot hold before they are delivered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch import nn

from pipeline.embed.backbone import normalize
from pipeline.embed.resize import FrameResize
from pipeline.embed.workers import Piece
from pipeline.errors import ActrecError

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504: larger values are stored as inf


@dataclass
class Batch:
    """A packed batch and whose rows it holds: ``owners`` lists ``(video index, rows)`` in row order."""
    frames: torch.Tensor
    owners: list = field(default_factory=list)


def _new_buffer(batch_size: int, img_dim: int, pin: bool) -> torch.Tensor:
    # NHWC memory viewed as NCHW: the layout resized frames and the channels_last model use.
    return torch.empty((batch_size, img_dim, img_dim, 3), dtype=torch.uint8, pin_memory=pin).permute(0, 3, 1, 2)


def batches(pieces: Iterator[Piece], batch_size: int, img_dim: int, pin: bool, on_end, timing: dict
            ) -> Iterator[Batch]:
    """Pack the frames of ``pieces`` into batches; ``on_end(piece)`` is called for each video's closing piece.

    The last batch is padded with zero frames: every forward pass has one shape, so the kernels that compute a
    frame's features do not depend on where a (resumed, or per-rank) run started."""
    batch, filled = Batch(_new_buffer(batch_size, img_dim, pin)), 0
    waited = time.perf_counter()
    for piece in pieces:
        started = time.perf_counter()
        timing["decode_wait"] += started - waited
        if piece.end:
            on_end(piece)
        else:
            frames, start = piece.frames, 0
            while start < len(frames):
                take = min(batch_size - filled, len(frames) - start)
                batch.frames[filled:filled + take].copy_(frames[start:start + take])
                batch.owners.append((piece.index, take))
                filled, start = filled + take, start + take
                if filled == batch_size:
                    timing["pack"] += time.perf_counter() - started
                    yield batch
                    started = time.perf_counter()
                    batch, filled = Batch(_new_buffer(batch_size, img_dim, pin)), 0
        timing["pack"] += time.perf_counter() - started
        waited = time.perf_counter()
    if filled:
        batch.frames[filled:].zero_()
        yield batch


class Forward:
    """The backbone on batches, both passes from one upload; ``submit`` starts a batch, ``collect`` waits for it."""

    def __init__(self, model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None, flip: bool,
                 resize: FrameResize):
        self.model, self.device, self.amp_dtype, self.flip = model, device, amp_dtype, flip
        self.mean, self.std = resize.mean, resize.std
        self.cuda = device.type == "cuda"

    @torch.inference_mode()
    def submit(self, frames: torch.Tensor):
        """Queue ``frames`` (uint8 batch) through the model; returns a handle for ``collect``."""
        x = normalize(frames, self.device, self.mean, self.std)  # non_blocking upload: pinned on CUDA
        inputs = [x, torch.flip(x, dims=[3])] if self.flip else [x]
        outputs = []
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            for batch in inputs:
                outputs.append(self.model(batch).float())
        if not self.cuda:
            return outputs, None
        hosts = [torch.empty(out.shape, dtype=torch.float32, pin_memory=True) for out in outputs]
        for host, out in zip(hosts, outputs):
            host.copy_(out, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return hosts, done

    @staticmethod
    def collect(handle) -> list[np.ndarray]:
        """Wait for a submitted batch; its features ``[batch_size, D]`` float32 (and the mirrored ones)."""
        outputs, done = handle
        if done is not None:
            done.synchronize()
        # Copies: the pinned buffers go back to the allocator instead of living until the video commits.
        return [out.numpy().copy() for out in outputs]


def run(forward: Forward, stream: Iterator[Batch], deliver, timing: dict) -> None:
    """Submit every batch of ``stream`` and ``deliver(batch, outputs)`` each one batch later (on CUDA the wait
    for batch k happens after batch k+1 is queued, so the GPU never idles on the copy back)."""
    pending = None
    for batch in stream:
        started = time.perf_counter()
        handle = forward.submit(batch.frames)
        timing["submit"] += time.perf_counter() - started
        if pending is not None:
            _finish(forward, pending, deliver, timing)
        pending = (batch, handle)
    if pending is not None:
        _finish(forward, pending, deliver, timing)


def _finish(forward: Forward, pending, deliver, timing: dict) -> None:
    batch, handle = pending
    started = time.perf_counter()
    outputs = forward.collect(handle)
    timing["wait"] += time.perf_counter() - started
    deliver(batch, outputs)


def check_storable(features: np.ndarray, dtype: str, backbone: str, video: str) -> None:
    """Refuse features that storage as ``dtype`` would break: not finite, or, in float16, beyond its range (stored
    as inf) or so small that a frame's whole feature becomes zero. Checked per batch, before any is committed."""
    finite = np.isfinite(features)
    problem = None
    if not finite.all():
        problem = "they are not finite (NaN or inf): the backbone's weights or input are broken"
    elif dtype == "float16":
        with np.errstate(over="ignore"):  # the overflow is what is checked for
            stored = features.astype(np.float16)
        if np.isinf(stored).any():
            problem = f"float16 storage turns values beyond +-{FLOAT16_MAX:.0f} into inf"
        elif ((stored == 0).all(axis=1) & (features != 0).any(axis=1)).any():
            problem = "float16 storage rounds a frame's whole feature to zero (underflow)"
    if problem:
        values = features[finite] if finite.any() else np.zeros(1)
        raise ActrecError(f"embed stopped: {backbone} gives features of {video} in [{values.min():.3g}, "
                          f"{values.max():.3g}] (largest |x| {np.abs(values).max():.3g}); {problem}. Nothing of "
                          f"{video} was written; set embed.dtype=float32 (a new cache) if the features are sound")
