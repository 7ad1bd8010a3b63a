"""The page's Search tab behind the scenes: ``actrec search`` over a served run's cache, with a thumbnail of each
hit at its best span and a clip that plays from there.

One ``SearchIndex`` per cache stays in memory once built (the first query of a cache pays for it); the videos
are found by their names in the run's dataset lists, never by a path from the request.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

from pipeline.errors import ActrecError
from pipeline.serve.media import clip_between, frame_at
from pipeline.serve.runs import ServedRun

log = logging.getLogger(__name__)

LIKE = "like:"  # a query that starts so is an example: like: VIDEO[@SECONDS]


class SearchService:
    """Search indexes of the served runs' caches, built on first use; thumbnails and clips in ``workdir``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self._indexes: dict[str, tuple] = {}  # cache path -> (cache, its SearchIndex)
        self._videos: dict[Path, dict[str, Path]] = {}  # run dir -> video name -> file
        self._lock = threading.Lock()

    def search(self, run: ServedRun, query: str, k: int) -> list:
        """The hits of ``query`` (a text, or ``like: VIDEO[@SECONDS]``) in ``run``'s cache."""
        from pipeline.zeroshot.search import check_request, example_query, text_query

        query = (query or "").strip()
        text, like = (None, query[len(LIKE):].strip()) if query.lower().startswith(LIKE) else (query, None)
        check_request(text, like, int(k))
        with self._lock:
            cache, index = self._index(run)
            vector, own = (text_query(run.config, cache, text), None) if text is not None else \
                example_query(cache, like)
            hits = index.query(vector, int(k), run.config.search.span_drop, exclude=own)
        log.info(f"{run.name}: search {query[:60]!r} -> {len(hits)} videos")
        return hits

    def _index(self, run: ServedRun) -> tuple:
        from pipeline.cache.reader import open_cache
        from pipeline.zeroshot.search import index_of

        path = str(Path(run.config.cache.path).resolve())
        if path not in self._indexes:
            cache = open_cache(run.config)
            cache.place("auto", flip=False)
            self._indexes[path] = (cache, index_of(run.config, cache))
        return self._indexes[path]

    def thumbnail(self, run: ServedRun, hit) -> str:
        """A JPEG of the hit's best frame (the middle of its best span)."""
        span = hit.spans[0]
        seconds = (span.start_seconds + span.end_seconds) / 2
        return str(frame_at(self.video(run, hit.video), seconds, self._file(run, hit.video, f"{seconds:.3f}", "jpg")))

    def clip(self, run: ServedRun, hit) -> str:
        """An MP4 of the hit's best span (half a second around it), to play from the matched time."""
        span = hit.spans[0]
        start, end = max(0.0, span.start_seconds - 0.5), span.end_seconds + 0.5
        out = self._file(run, hit.video, f"{start:.3f}-{end:.3f}", "mp4")
        return str(clip_between(self.video(run, hit.video), start, end, out))

    def video(self, run: ServedRun, name: str) -> Path:
        """The file of video ``name`` of ``run``'s dataset lists (``embed.splits``)."""
        from pipeline.inputs.formats import embed_items

        if run.dir not in self._videos:
            self._videos[run.dir] = {item.name: item.path for item in embed_items(run.config, check_videos=False)[1]}
        if name not in self._videos[run.dir]:
            raise ActrecError(f"{name!r} is not a video of {run.name}'s dataset lists")
        return self._videos[run.dir][name]

    def _file(self, run: ServedRun, video: str, what: str, suffix: str) -> Path:
        key = hashlib.sha1(f"{run.dir}/{video}/{what}".encode()).hexdigest()[:16]
        return self.workdir / "search" / f"{key}.{suffix}"
