"""Device-resident features: a run's videos' features copied to the training device once, and where clips sit in them.

With ``cache.load: device`` (or ``auto`` on a GPU when the run's features fit in ``DEVICE_SHARE`` of its
free memory), the videos' features go to the device in one copy. Each epoch the clip frame indices are
computed with the sampling module's own seeded draws (``TrainClips.draw``: the same draws per (seed, epoch,
position) as the DataLoader path) and uploaded as one index tensor of feature positions; clips.DeviceClips
gathers every batch from it on the device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.sequence.datasets import EvalClips, TrainClips
from pipeline.sequence.sampling import eval_clip_indices

DEVICE_SHARE = 0.5  # 'auto' puts the features on a GPU when they take at most this share of its free memory


class ResidentFeatures:
    """The frames of some cache rows (and their mirrored frames, with ``flip``) in one tensor on ``device``."""

    def __init__(self, cache, rows: list[int], device: torch.device, flip: bool):
        rows = list(dict.fromkeys(rows))
        lengths = np.array([int(cache.lengths[row]) for row in rows], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.start = dict(zip(rows, starts.tolist()))
        self.frames = int(lengths.sum())  # offset of the mirrored half
        host = np.empty((self.frames * (2 if flip else 1), cache.dim), dtype=np.dtype(cache.dtype))
        for half, mirrored in enumerate((False, True) if flip else (False,)):
            for row, start, n in zip(rows, starts, lengths):
                first = half * self.frames + start
                host[first:first + n] = cache.sequence(row, flip=mirrored)
        self.features = torch.from_numpy(host).to(device)
        self.device = device

    @staticmethod
    def nbytes(cache, rows: list[int], flip: bool) -> int:
        frames = sum(int(cache.lengths[row]) for row in dict.fromkeys(rows))
        return frames * cache.dim * np.dtype(cache.dtype).itemsize * (2 if flip else 1)

    def index(self, row: int, frame_indices: np.ndarray, flip: bool = False) -> np.ndarray:
        """Positions in ``features`` of frames ``frame_indices`` of cache row ``row``."""
        return self.start[row] + np.asarray(frame_indices, dtype=np.int64) + (self.frames if flip else 0)

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """Float32 features at ``index`` (any shape), gathered on the device: ``[*index.shape, D]``."""
        return self.features[index].float()


def host_load(load: str) -> str:
    """Where the cache's features wait in the host before a device copy: 'device' reads them into memory
    when that fits (one fast read), as 'auto' does; the other choices stand as they are."""
    return "auto" if load == "device" else load


def choose_placement(load: str, cache, rows: list[int], flip: bool, device: torch.device) -> bool:
    """Whether the run's features go to the training device (``cache.load`` device, or auto on a GPU whose free
    memory holds them in ``DEVICE_SHARE`` of it)."""
    if load == "device":
        return True
    if load != "auto" or device.type != "cuda":
        return False
    # Free, not total: other processes (a sweep's parallel runs, another user) may hold much of the GPU already.
    free, _ = torch.cuda.mem_get_info(device)
    return ResidentFeatures.nbytes(cache, rows, flip) <= DEVICE_SHARE * free


def epoch_plan(train_set: TrainClips, resident: ResidentFeatures) -> torch.Tensor:
    """``[N, L]`` feature positions of every training clip of the epoch ``train_set`` is set to, on the device."""
    plan = np.empty((len(train_set), train_set.length), dtype=np.int64)
    for k in range(len(train_set)):
        indices, flip = train_set.draw(k)
        plan[k] = resident.index(train_set.rows[k], indices, flip)
    return torch.from_numpy(plan).to(resident.device)


def eval_plan(dataset: EvalClips, resident: ResidentFeatures) -> torch.Tensor:
    """``[N, K, L]`` feature positions of every evaluation clip of ``dataset``'s videos, on the device."""
    plan = np.empty((len(dataset), dataset.clips, dataset.length), dtype=np.int64)
    for k, row in enumerate(dataset.rows):
        plan[k] = resident.index(row, eval_clip_indices(int(dataset.cache.lengths[row]), dataset.length,
                                                        dataset.clips))
    return torch.from_numpy(plan).to(resident.device)


def batches(order: np.ndarray, batch_size: int, device: torch.device):
    """Slices of ``order`` (positions) of ``batch_size``, as device tensors, last one shorter."""
    order_t = torch.from_numpy(np.asarray(order, dtype=np.int64)).to(device)
    for step in range(math.ceil(len(order) / batch_size)):
        yield order_t[step * batch_size:(step + 1) * batch_size]
