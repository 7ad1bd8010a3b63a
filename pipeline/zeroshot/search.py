"""``actrec search``: the videos of a cache, and the time spans in them, that match a text query (OpenCLIP caches,
through the same model's text tower) or an example (``--like VIDEO[@SECONDS]``, any cache).

Exact: every frame of the cache is scored by cosine similarity with the query. ``SearchIndex`` holds every
frame's unit feature once, in float16 (the cache's own size; built ``BLOCK_ROWS`` frames at a time, so nothing
larger is ever allocated), and a query is one float16 matrix-vector product over it. Float16 rounding moves a score
by at most ``FLOAT16_MARGIN``, so every video whose float16 best frame comes within that margin of the ``k``-th is
scored again in float32 from the cache, and the ranking, the scores and the spans are the float32 ones: the same
as a brute-force float32 search. With ``search.keep_index`` the index is kept beside the cache
(``CACHE.search/KEY.npy``, the cache's size again) and read by the next search instead of built.

A video scores its best frame's score; the top ``k`` videos (the example's own video left out) come with their
spans: the runs of consecutive frames whose score is within ``search.span_drop`` of the video's best, each with
start and end seconds (frame index / the cache's frame rate) and its best score.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.errors import ActrecError
from pipeline.fileio import atomic_path

log = logging.getLogger(__name__)

BLOCK_ROWS = 1 << 16  # frames normalised per block while the index is built: 128 MiB of float32 at 512-d
# Unit vectors rounded to float16 (11-bit significands), their products summed in float32 and the sum rounded to
# float16: each rounding moves a cosine by at most 2**-11 of its bound (1), three of them 0.0015. Twice that.
FLOAT16_MARGIN = 0.003
MAX_QUERY_CHARS = 1000
MAX_SPANS = 3  # spans listed per video
ASSUMED_FPS = 25.0  # a cache that records no frame rate (an import without fps or timestamps)


@dataclass
class Span:
    start_frame: int
    end_frame: int  # inclusive
    start_seconds: float
    end_seconds: float
    score: float


@dataclass
class Hit:
    rank: int
    video: str
    label: str
    score: float
    spans: list[Span] = field(default_factory=list)


def search(cfg: Config, text: str | None = None, like: str | None = None, k: int = 10) -> list[Hit]:
    """The ``k`` best videos of ``cfg``'s cache for the text query ``text`` or the example ``like``."""
    from pipeline.cache.reader import open_cache

    check_request(text, like, k)
    cache = open_cache(cfg)
    cache.place("auto", flip=False)
    query, own = (text_query(cfg, cache, text), None) if text is not None else example_query(cache, like)
    return index_of(cfg, cache).query(query, k, cfg.search.span_drop, exclude=own)


def index_of(cfg: Config, cache) -> SearchIndex:
    """The search index of ``cache``: kept beside it with ``search.keep_index``, else built for this search."""
    return SearchIndex.kept(cache) if cfg.search.keep_index else SearchIndex(cache)


def check_request(text: str | None, like: str | None, k: int) -> None:
    """One query (a text or an example), of a sane length, and k of at least 1."""
    if (text is None) == (like is None):
        raise ActrecError("give a text query or --like VIDEO[@SECONDS], one of them")
    if text is not None and not text.strip():
        raise ActrecError("the query is empty; say what to look for, e.g. \"a person juggling\"")
    if text is not None and len(text) > MAX_QUERY_CHARS:
        raise ActrecError(f"the query is {len(text)} characters; at most {MAX_QUERY_CHARS}")
    if k < 1:
        raise ActrecError(f"-k {k}: ask for at least one video")


def text_query(cfg: Config, cache, text: str) -> np.ndarray:
    """The query's unit embedding from the text tower of the model that embedded the cache."""
    from pipeline.embed.backbones import backbone_of
    from pipeline.zeroshot.text import check_open_clip_cache, check_text_tower, prompt_embeddings

    check_open_clip_cache(cache, "a text query needs an OpenCLIP cache; search it by example with --like "
                                 "VIDEO[@SECONDS]")
    backbone = backbone_of(cfg.embed)
    check_text_tower(backbone, cache.fingerprint, cfg.cache.path)
    return prompt_embeddings(backbone.build_text("cpu"), [text])[0].astype(np.float32)


def example_query(cache, like: str) -> tuple[np.ndarray, str]:
    """``VIDEO@SECONDS``: that frame's unit feature; ``VIDEO``: the mean of its unit frame features. And the
    video, which the results leave out."""
    video, at, seconds = like.rpartition("@") if "@" in like else (like, "", "")
    if video not in cache:
        raise ActrecError(f"--like {like}: {video!r} is not in {cache.path} (names look like "
                          f"{cache.names[0] if len(cache) else 'Class/video'})")
    frames = _unit(cache.sequence(cache.index_of(video)))
    if not at:
        mean = frames.mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12), video
    try:
        when = float(seconds)
    except ValueError:
        raise ActrecError(f"--like {like}: {seconds!r} is not a number of seconds") from None
    fps = cache.fps or ASSUMED_FPS
    frame = int(round(when * fps)) if np.isfinite(when) else -1
    if not 0 <= frame < len(frames):
        raise ActrecError(f"--like {like}: {video} lasts {len(frames) / fps:.2f} s ({len(frames)} frames at "
                          f"{fps:g} fps); give a time inside it")
    return frames[frame], video


class SearchIndex:
    """Every frame's unit feature in float16, for exact queries (see the module's docstring)."""

    def __init__(self, cache, units=None):
        import torch

        self.cache = cache
        self.offsets, self.lengths = np.asarray(cache.offsets), np.asarray(cache.lengths)
        if units is not None:
            self.units = units
            return
        self.units = torch.empty((cache.total_frames, cache.dim), dtype=torch.float16)
        for start in range(0, cache.total_frames, BLOCK_ROWS):
            stop = min(cache.total_frames, start + BLOCK_ROWS)
            block = torch.from_numpy(np.asarray(cache.rows_between(start, stop))).float()
            self.units[start:stop] = torch.nn.functional.normalize(block, dim=1)

    @classmethod
    def kept(cls, cache) -> SearchIndex:
        """The index of ``cache`` kept beside it (``CACHE.search/KEY.npy``, the units as float16), read when its key
        still matches the cache (its fingerprint, creation time, videos and frames: an embed that adds videos makes a
        new one), else built and written there."""
        import torch

        path = index_path(cache)
        if path.is_file():
            try:
                units = np.load(path, allow_pickle=False)
                if units.shape == (cache.total_frames, cache.dim) and units.dtype == np.float16:
                    log.info("search index from %s", path)
                    return cls(cache, torch.from_numpy(units))
            except (OSError, ValueError) as exc:
                log.warning("%s is unreadable (%s); building the search index again", path, exc)
        index = cls(cache)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, index.units.numpy(), allow_pickle=False)
        for older in path.parent.glob("*.npy"):  # indexes of the cache as it was before (fewer videos)
            if older != path:
                older.unlink(missing_ok=True)
        log.info("search index written to %s (%.0f MiB)", path, path.stat().st_size / 2**20)
        return index

    def query(self, query: np.ndarray, k: int, span_drop: float, exclude: str | None = None) -> list[Hit]:
        """The ``k`` videos with the best frames for the unit ``query``, ranked and scored in float32."""
        import torch

        if not len(self.offsets):
            return []
        rough = (self.units @ torch.from_numpy(query.astype(np.float16))).float().numpy()
        best = np.maximum.reduceat(rough, self.offsets)
        if exclude is not None:
            best[self.cache.index_of(exclude)] = -np.inf
        kept = best[np.isfinite(best)]
        if not len(kept):
            return []
        kth = np.partition(kept, -min(k, len(kept)))[-min(k, len(kept))]
        candidates = np.flatnonzero(best >= kth - 2 * FLOAT16_MARGIN)  # every video that could be in the top k
        exact = {int(i): self.exact_scores(int(i), query) for i in candidates}
        order = sorted(exact, key=lambda i: (-float(exact[i].max()), i))[:k]
        fps = self.cache.fps or ASSUMED_FPS
        return [Hit(rank, self.cache.names[i], self.cache.class_names[int(self.cache.labels[i])],
                    round(float(exact[i].max()), 6), spans(exact[i], float(exact[i].max()) - span_drop, fps))
                for rank, i in enumerate(order, 1)]

    def exact_scores(self, i: int, query: np.ndarray) -> np.ndarray:
        """Video ``i``'s frame scores in float32, from the cache."""
        return _unit(self.cache.sequence(i)) @ query.astype(np.float32)


def index_path(cache) -> Path:
    """Where ``SearchIndex.kept`` keeps ``cache``'s index: named by what the index depends on."""
    key = json.dumps([cache.fingerprint, cache.created, cache.total_frames, cache.names[-1:], len(cache)],
                     sort_keys=True, default=str)
    return Path(str(cache.path) + ".search") / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"


def spans(video: np.ndarray, threshold: float, fps: float) -> list[Span]:
    """The runs of consecutive frames scoring at least ``threshold``, best first (at most ``MAX_SPANS``)."""
    above = np.concatenate([[False], video >= threshold, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    runs = [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]
    found = [Span(a, b, round(a / fps, 3), round((b + 1) / fps, 3), round(float(video[a:b + 1].max()), 6))
             for a, b in runs]
    return sorted(found, key=lambda s: -s.score)[:MAX_SPANS]


def format_hits(hits: list[Hit]) -> str:
    """The results as a table: rank, score, video, its class and its spans in seconds."""
    if not hits:
        return "no videos in the cache"
    lines = [f"{'rank':>4}  {'score':>7}  video (class): spans in seconds"]
    for hit in hits:
        where = ", ".join(f"{s.start_seconds:.2f}-{s.end_seconds:.2f}" for s in hit.spans)
        lines.append(f"{hit.rank:>4}  {hit.score:7.4f}  {hit.video} ({hit.label}): {where}")
    return "\n".join(lines)


def as_json(hits: list[Hit]) -> list[dict]:
    return [asdict(hit) for hit in hits]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
