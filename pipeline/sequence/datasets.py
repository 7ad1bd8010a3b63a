"""The torch datasets of clips: one random training clip per video per epoch, every evaluation clip of a video
(the frames each takes come from ``sampling.py``)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.sequence.sampling import eval_clip_indices, make_clip_sampler


class TrainClips(Dataset):
    """One random clip per video per epoch: ``(features [L, D] float32, label)``."""

    def __init__(self, cache, rows: list[int], labels: list[int], length: int, seed: int, flip: bool,
                 sampler: str = "segments"):
        self.cache, self.rows, self.labels = cache, rows, labels
        self.length, self.seed, self.flip, self.sampler = length, seed, flip, make_clip_sampler(sampler)
        self.epoch = 0

    def mean_span(self) -> float:
        """Frames a training clip covers, averaged over the videos: with the cache's fps, the clips' time scale."""
        return float(np.mean([self.sampler.span(int(self.cache.lengths[row]), self.length) for row in self.rows]))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def draw(self, k: int) -> tuple[np.ndarray, bool]:
        """Frame indices and mirroring of position ``k``'s clip this epoch: the seeded draws that the
        DataLoader path and the device-resident path (resident.py) share."""
        rng = np.random.default_rng([self.seed, self.epoch, k])
        indices = self.sampler.indices(int(self.cache.lengths[self.rows[k]]), self.length, rng)
        return indices, bool(self.flip and rng.random() < 0.5)

    def __getitem__(self, k: int):
        indices, flip = self.draw(k)
        return torch.from_numpy(self.cache.frames(self.rows[k], indices, flip=flip)), self.labels[k]


class EvalClips(Dataset):
    """Every evaluation clip of a video at once: ``(features [K, L, D] float32, label)``."""

    def __init__(self, cache, rows: list[int], labels: list[int], length: int, clips: int):
        self.cache, self.rows, self.labels = cache, rows, labels
        self.length, self.clips = length, clips

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        row = self.rows[k]
        indices = eval_clip_indices(int(self.cache.lengths[row]), self.length, self.clips)
        clips = self.cache.frames(row, indices.reshape(-1)).reshape(self.clips, self.length, -1)
        return torch.from_numpy(clips), self.labels[k]
