"""One clip source for training, validation and evaluation: batches of clips on the model's device.

The loops (``loop.train_epoch``, ``loop.predict_clips``) ask a ``ClipSource`` for batches and never for where
the features live. ``clip_source`` picks one of two:

- ``LoaderClips``: a DataLoader reads each clip from the cache (in host memory or on disk) and the batch is
  copied to the device;
- ``DeviceClips``: the run's videos' features were copied to the device once (resident.py); each epoch's frame
  indices are uploaded as one tensor and every batch is gathered there.

Both give the same batches in the same order with the same values (the draws are ``TrainClips.draw``'s), so a
CPU run trains the same weights either way and a resumed run continues exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.sequence.datasets import EvalClips, TrainClips
from pipeline.sequence.resident import ResidentFeatures, batches, choose_placement, epoch_plan, eval_plan

log = logging.getLogger(__name__)


class ClipSource(Protocol):
    """Where the loops get their batches: features float32 on ``device`` and labels (int64) on ``device``."""

    device: torch.device

    def train_batches(self, clips: TrainClips, order: np.ndarray, batch_size: int
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``clips``' clips of the epoch it is set to, visited in ``order``: ``([b, L, D], [b])`` per batch."""

    def eval_batches(self, clips: EvalClips, videos_per_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every evaluation clip of ``clips``' videos in list order: ``([b, K, L, D], [b])`` per batch."""


def clip_source(load: str, cache, rows: list[int], flip: bool, device: torch.device, workers: int = 0) -> ClipSource:
    """The clip source for ``rows`` of ``cache``: their features on ``device`` when ``cache.load`` puts them there
    (device, or auto on a GPU with room; resident.py), else a DataLoader with ``workers`` processes."""
    if not choose_placement(load, cache, rows, flip, device):
        return LoaderClips(device, workers)
    resident = ResidentFeatures(cache, rows, device, flip)
    log.info(f"features of {len(resident.start)} videos on {device} ({resident.features.nbytes / 2**20:.1f} MiB): "
             f"clips gathered there, no DataLoader")
    return DeviceClips(resident)


def make_loader(dataset, batch_size: int, workers: int, order=None) -> DataLoader:
    """Batches of ``dataset`` visited in ``order`` (positions; list order when None), so runs repeat exactly."""
    order = list(range(len(dataset))) if order is None else [int(k) for k in order]
    # An explicit generator keeps worker seeding from consuming the global RNG that dropout draws from.
    return DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers,
                      generator=torch.Generator().manual_seed(0), persistent_workers=False)


class LoaderClips:
    """Clips read from the cache by a DataLoader (``workers`` processes), each batch copied to ``device``."""

    def __init__(self, device: torch.device, workers: int = 0):
        self.device, self.workers = device, workers

    def train_batches(self, clips: TrainClips, order: np.ndarray, batch_size: int):
        yield from self._to_device(make_loader(clips, batch_size, self.workers, order))

    def eval_batches(self, clips: EvalClips, videos_per_batch: int):
        yield from self._to_device(make_loader(clips, videos_per_batch, workers=0))

    def _to_device(self, loader: DataLoader):
        for features, labels in loader:
            yield features.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


class DeviceClips:
    """Clips gathered from features resident on the device: no DataLoader, no per-clip numpy, no copy per step."""

    def __init__(self, resident: ResidentFeatures):
        self.resident, self.device = resident, resident.device

    def train_batches(self, clips: TrainClips, order: np.ndarray, batch_size: int):
        plan = epoch_plan(clips, self.resident)  # [N, L] positions in the resident features
        yield from self._gather(plan, clips.labels, order, batch_size)

    def eval_batches(self, clips: EvalClips, videos_per_batch: int):
        plan = eval_plan(clips, self.resident)  # [N, K, L]
        yield from self._gather(plan, clips.labels, np.arange(len(clips)), videos_per_batch)

    def _gather(self, plan: torch.Tensor, labels: list[int], order: np.ndarray, batch_size: int):
        labels_all = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        for positions in batches(order, batch_size, self.device):
            yield self.resident.gather(plan[positions]), labels_all[positions]
