"""Which frames of a cached sequence a training or evaluation clip takes: the clip samplers and their geometry.

A video of ``n`` cached frames gives clips of ``L`` frames (``train.sequence_length``):

- the video is cut into ``L`` equal segments (segment sampling, as in TSN), and every clip takes one
  frame from each segment, so training, evaluation and prediction all see a clip on one time scale:
  the whole video squeezed into ``L`` frames;
- training (``train.sampler: segments``): a random frame of each segment; with a mirrored cache and
  ``train.flip``, the whole clip comes from the flipped features with p = 0.5;
- evaluation: ``eval.clips`` clips at fixed offsets inside the same segments (one clip = the segment
  centres);
- ``train.sampler: stride`` keeps the seed's sampler (a stride drawn from ``1..max(1, n // L)`` and a
  random start): its clips move faster than the evaluation clips, so order-aware models are scored on
  a time scale they did not train on. It is there to compare against, not the default.

A video shorter than ``L`` frames spreads its frames evenly over the clip (clip frame ``j`` is video frame
``floor(j * n / L)``), in training, evaluation and prediction alike: every frame is repeated about equally, so
the clip still plays the video at one even speed. Repeating the last frame instead would freeze the clip's
end; repeating the whole sequence would add a jump from the end back to the start (motion played backwards).

Every draw comes from a generator seeded with (train.seed, epoch, position in the list), so a run
samples the same clips whatever the number of DataLoader workers, and a resumed run continues exactly.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import ActrecError
from pipeline.registry import registry

SAMPLERS = registry("sampler")


def spread_indices(n: int, length: int) -> np.ndarray:
    """The frames a clip of ``length`` draws from: ``0..n-1``, or for a video shorter than ``length`` the
    ``length`` indices ``floor(j * n / length)`` (each frame repeated about equally, in order)."""
    if n < 1:
        raise ActrecError("a cached video has no frames; re-run `actrec embed` (the cache is inconsistent)")
    if n >= length:
        return np.arange(n)
    return np.arange(length) * n // length


def segment_indices(n: int, length: int, offsets: np.ndarray) -> np.ndarray:
    """``[..., length]`` frame indices: the frame at fraction ``offsets`` (in [0, 1)) of each of ``length``
    equal segments of the video (spread to ``length`` frames when shorter).

    ``offsets`` is ``[length]`` for one clip or ``[K, length]`` / ``[K, 1]`` for K clips; segment ``j`` of a
    video of ``m = max(n, length)`` frames covers ``[j * m / length, (j + 1) * m / length)``.
    """
    frames = spread_indices(n, length)
    positions = (np.arange(length) + offsets) * len(frames) / length
    return frames[np.minimum(positions.astype(np.int64), len(frames) - 1)]


@SAMPLERS.register("segments")
class SegmentSampler:
    """``segments``: a random frame of each of ``length`` equal segments, so a clip spans the whole video."""

    def indices(self, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
        return segment_indices(n, length, rng.random(length))

    def span(self, n: int, length: int) -> float:
        return float(n)


@SAMPLERS.register("stride")
class StrideSampler:
    """``stride``: the seed's sampler, a random stride in 1..max(1, n // length) from a random start."""

    def indices(self, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
        frames = spread_indices(n, length)
        stride = int(rng.integers(1, max(1, len(frames) // length) + 1))
        start = int(rng.integers(0, len(frames) - stride * length + 1))
        return frames[start:start + stride * length:stride]

    def span(self, n: int, length: int) -> float:
        # A short video's clip spreads over its n frames; a longer one's covers stride * length, averaged.
        if n < length:
            return float(n)
        return float(np.mean(np.arange(1, max(1, n // length) + 1) * length))


def make_clip_sampler(name: str):
    """The training clip sampler ``train.sampler`` names (a class registered with ``SAMPLERS``, built without
    arguments): ``indices(n, length, rng)`` draws a clip's frame indices, ``span(n, length)`` is how many frames
    of the video a clip covers on average."""
    return SAMPLERS.get(name, "train.sampler").build()


def eval_clip_indices(n: int, length: int, clips: int = 1) -> np.ndarray:
    """``[clips, length]`` frame indices of the evaluation clips, each spanning the whole video.

    The video is cut into ``length`` equal segments; clip ``k`` takes the frame at fraction
    ``(k + 0.5) / clips`` of each segment. One clip = the segment centres, evenly spaced.
    """
    return segment_indices(n, length, (np.arange(clips)[:, None] + 0.5) / clips)
