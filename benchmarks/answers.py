"""Rows 12: answers without training on a UCF-101-sized cache (13,320 videos of 187 frames, 512-d float16, the
size of a ViT-B CLIP cache): zero-shot scoring, one search query, a linear probe's fit.

The cache is written once with features that carry their class (a class centre plus per-frame noise), so the
probe converges as on real features rather than on noise. Each row times the project's own functions on it:
``zeroshot.run.video_logits`` over every video; one ``zeroshot.search.SearchIndex.query`` with the index built
(loading the features and building the index, once per cache, are reported beside it); and
``sequence.probe_methods.fit_linear`` / ``fit_knn`` on the pooled features.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Sizes, row, timed

log = logging.getLogger(__name__)

CLASSES = 101


def answer_cache(sizes: Sizes, work: Path) -> Path:
    """The cache of rows 12: ``sizes.answer_videos`` videos of ``sizes.answer_frames`` frames, class-structured."""
    from pipeline.cache.writer import FeatureCacheWriter

    work.mkdir(parents=True, exist_ok=True)
    path = work / "answers.h5"
    rng = np.random.default_rng(0)
    dim = sizes.answer_dim
    centres = rng.standard_normal((CLASSES, dim), dtype=np.float32)
    with FeatureCacheWriter(path, {"name": "bench"}, [f"Class{c:03d}" for c in range(CLASSES)], dim,
                            dtype="float16", fps=25.0) as writer:
        for v in range(sizes.answer_videos):
            label = v % CLASSES
            rows = centres[label] + 2.0 * rng.standard_normal((sizes.answer_frames, dim), dtype=np.float32)
            writer.add(f"Class{label:03d}/v_{v:05d}", label, rows)
    return path


def bench_answers(sizes: Sizes, work: Path, command: str) -> list[dict]:
    """Rows 12-zeroshot, 12-search and 12-probe on one cache built here."""
    from pipeline.cache.reader import FeatureCache
    from pipeline.zeroshot.run import video_logits
    from pipeline.zeroshot.search import SearchIndex

    started = time.perf_counter()
    path = answer_cache(sizes, work)
    built = time.perf_counter() - started
    cache = FeatureCache(path)
    load, _ = timed(cache.place, "memory", False)
    frames, videos = cache.total_frames, len(cache)
    rng = np.random.default_rng(1)
    classes = _unit(rng.standard_normal((CLASSES, cache.dim)).astype(np.float32))
    zeroshot_seconds, _ = timed(lambda: [video_logits(cache.sequence(i), classes, 100.0, "mean")
                                          for i in range(videos)])
    index_seconds, _ = timed(SearchIndex.kept, cache)  # built, and kept beside the cache
    reread_seconds, index = timed(SearchIndex.kept, cache)  # what the next search pays instead
    search_seconds, hits = timed(index.query, classes[0], 10, 0.05)
    probe = _probe_row(cache, sizes, command)
    size = f"{videos:,} videos, {frames:,} frames, {cache.dim}-d"
    common = {"videos": videos, "frames": frames, "dim": cache.dim, "build_seconds": round(built, 1),
              "load_seconds": round(load, 2)}
    return [
        row("12-zeroshot", f"zero-shot scoring of every video ({size}, {CLASSES} classes)",
            f"{zeroshot_seconds:.1f} s", zeroshot_seconds, "< 10 s", zeroshot_seconds < 10, command, **common),
        row("12-search", f"one search query over every frame, features in memory ({size})",
            f"{search_seconds:.2f} s (before it, once: loading the features {load:.1f} s; building and keeping the "
            f"index {index_seconds:.1f} s, reading it back {reread_seconds:.1f} s)", search_seconds, "<= 1 s",
            search_seconds <= 1.0, command, index_seconds=round(index_seconds, 2),
            reread_seconds=round(reread_seconds, 2),
            top_score=hits[0].score if hits else None, **common),
        probe,
    ]


def _probe_row(cache, sizes: Sizes, command: str) -> dict:
    """The linear probe's and kNN's fits on mean-pooled features, 70 / 10 / 20 % train / val / test."""
    from pipeline.sequence.probe_methods import fit_knn, fit_linear

    pooled = np.stack([cache.sequence(i).mean(axis=0) for i in range(len(cache))]).astype(np.float64)
    labels = np.asarray(cache.labels, dtype=np.int64)
    order = np.random.default_rng(2).permutation(len(labels))
    cut1, cut2 = int(0.7 * len(order)), int(0.8 * len(order))
    train, val, test = order[:cut1], order[cut1:cut2], order[cut2:]
    linear_seconds, linear = timed(fit_linear, (pooled[train], labels[train]), (pooled[val], labels[val]), CLASSES,
                                    1e-3, 1e3, 7, 1000)
    knn_seconds, knn = timed(fit_knn, (pooled[train], labels[train]), (pooled[val], labels[val]), CLASSES, 50)
    top1 = float((linear.probabilities(pooled[test]).argmax(axis=1) == labels[test]).mean())
    return row("12-probe", f"probe fits on pooled features ({len(train)} train / {len(val)} val videos, "
                           f"{cache.dim}-d, {CLASSES} classes)",
               f"linear {linear_seconds:.1f} s (7 values of C, then the refit), kNN {knn_seconds:.1f} s", None,
               "report", None, command, linear_seconds=round(linear_seconds, 2), knn_seconds=round(knn_seconds, 2),
               linear_chosen=linear.chosen, knn_chosen=knn.chosen, linear_test_top1=round(top1, 3))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)
