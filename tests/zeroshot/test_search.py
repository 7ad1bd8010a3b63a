"""actrec search: exact scores equal a brute-force reference, a planted match is found with its time span, a text
query on an OpenCLIP cache equals open_clip's own text tower, and bad queries are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cache.writer import FeatureCacheWriter
from pipeline.cli import cli
from pipeline.errors import ActrecError
from pipeline.zeroshot import search as search_module
from pipeline.zeroshot.search import SearchIndex, search, spans
from tests.orderdata import order_config, write_order_dataset


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """The order dataset's cache rewritten with one video whose frames 20-29 are the query direction."""
    cfg = order_config(tmp_path / "data", f"cache.path={tmp_path}/cache.h5")
    write_order_dataset(cfg, dim=16)
    from pipeline.cache.reader import FeatureCache

    source = FeatureCache(cfg.cache.path)
    rng = np.random.default_rng(1)
    query = rng.normal(size=16).astype(np.float32)
    query /= np.linalg.norm(query)
    target = "TriangleGrow/v_TriangleGrow_g03_c02"
    path = tmp_path / "planted.h5"
    with FeatureCacheWriter(path, source.fingerprint, source.class_names, 16, dtype="float32",
                            config=source.config, fps=10.0) as writer:
        for i, name in enumerate(source.names):
            rows = rng.normal(size=(40, 16)).astype(np.float32)
            if name == target:
                rows[20:30] = 3.0 * query + rng.normal(0, 0.05, (10, 16))
            writer.add(name, int(source.labels[i]), rows)
    monkeypatch.setattr(search_module, "BLOCK_ROWS", 64)  # many blocks while the index is built, cutting videos
    return cfg.updated(cache={"path": str(path)}), query, target


def test_exact_scores_equal_brute_force_and_the_planted_frames_are_found(planted):
    from pipeline.cache.reader import FeatureCache

    cfg, query, target = planted
    cache = FeatureCache(cfg.cache.path)
    everything = np.concatenate([cache.sequence(i) for i in range(len(cache))])
    brute = everything @ query / np.linalg.norm(everything, axis=1)
    by_video = {name: float(brute[o:o + n].max()) for name, o, n in zip(cache.names, cache.offsets, cache.lengths)}
    hits = SearchIndex(cache).query(query, len(cache), 0.05)
    assert [h.video for h in hits] == sorted(by_video, key=lambda name: -by_video[name])
    assert [h.score for h in hits] == pytest.approx([by_video[h.video] for h in hits], abs=1e-5)
    # --like VIDEO@SECONDS: that frame (25, at 10 fps) is the query; every other video scores its best frame.
    frame = everything[int(cache.offsets[cache.index_of(target)]) + 25]
    by_frame = everything @ frame / np.linalg.norm(everything, axis=1) / np.linalg.norm(frame)
    expected = {name: float(by_frame[o:o + n].max()) for name, o, n in zip(cache.names, cache.offsets, cache.lengths)
                if name != target}  # the example's own video is left out
    hits = search(cfg, like=f"{target}@2.5", k=len(cache))
    assert [h.video for h in hits] == sorted(expected, key=lambda name: -expected[name])
    assert [h.score for h in hits] == pytest.approx([expected[h.video] for h in hits], abs=1e-5)


def test_a_query_vector_finds_the_planted_video_and_its_span(planted, monkeypatch):
    cfg, query, target = planted
    monkeypatch.setattr(search_module, "text_query", lambda cfg, cache, text: query)
    hits = search(cfg, text="the planted thing", k=2)
    assert hits[0].video == target and hits[0].rank == 1 and hits[0].label == "TriangleGrow"
    span = hits[0].spans[0]
    assert (span.start_frame, span.end_frame) == (20, 29) and (span.start_seconds, span.end_seconds) == (2.0, 3.0)
    assert hits[0].score > 0.95 > hits[1].score


def test_spans_are_runs_of_frames_near_the_best_score():
    found = spans(np.array([0.1, 0.9, 0.95, 0.2, 0.92, 0.93, 0.1], dtype=np.float32), 0.9, fps=2.0)
    assert [(s.start_frame, s.end_frame) for s in found] == [(1, 2), (4, 5)]
    assert (found[0].start_seconds, found[0].end_seconds) == (0.5, 1.5)


def test_the_command_prints_a_table_and_writes_json(planted, tmp_path):
    import yaml

    cfg, _, target = planted
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "hits.json"
    result = CliRunner().invoke(cli, ["-q", "search", "--like", "BlockMoveLeft/v_BlockMoveLeft_g01_c01", "-k", "4",
                                      "-c", str(config), "--json", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split()[:2] == ["rank", "score"] and len(result.output.splitlines()) == 5
    assert [hit["rank"] for hit in json.loads(out.read_text())] == [1, 2, 3, 4]


BAD = {
    "empty query": ({"text": "  "}, "the query is empty"),
    "long query": ({"text": "x" * 10000}, "the query is 10000 characters; at most 1000"),
    "no query": ({}, "give a text query or --like VIDEO"),
    "both": ({"text": "a", "like": "v"}, "give a text query or --like VIDEO"),
    "k zero": ({"like": "BlockMoveLeft/v_BlockMoveLeft_g01_c01", "k": 0}, "-k 0: ask for at least one video"),
    "unknown video": ({"like": "Nope/v_nope"}, r"--like Nope/v_nope: 'Nope/v_nope' is not in"),
    "time outside": ({"like": "BlockMoveLeft/v_BlockMoveLeft_g01_c01@99"}, r"lasts 4.00 s \(40 frames at 10 fps\)"),
    "not seconds": ({"like": "BlockMoveLeft/v_BlockMoveLeft_g01_c01@soon"}, "'soon' is not a number of seconds"),
    "text on resnet": ({"text": "juggling"}, "a text query needs an OpenCLIP cache"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_queries_are_one_line(planted, case):
    cfg, _, _ = planted
    kwargs, message = BAD[case]
    with pytest.raises(ActrecError, match=message):
        search(cfg, **kwargs)


def test_the_index_is_kept_beside_the_cache_and_read_by_the_next_search(planted, monkeypatch):
    from pipeline.cache.reader import FeatureCache
    from pipeline.zeroshot.search import index_path

    cfg, query, target = planted
    first = search(cfg, like=f"{target}@2.5", k=5)
    kept = index_path(FeatureCache(cfg.cache.path))
    assert kept.is_file() and kept.parent.name == "planted.h5.search"

    def no_build(self, cache, units=None):
        assert units is not None, "the index was built again"
        self.cache, self.units = cache, units
        self.offsets, self.lengths = np.asarray(cache.offsets), np.asarray(cache.lengths)

    monkeypatch.setattr(SearchIndex, "__init__", no_build)
    assert search(cfg, like=f"{target}@2.5", k=5) == first  # read from the file: the same hits
    monkeypatch.undo()
    assert search(cfg.updated(search={"keep_index": False}), like=f"{target}@2.5", k=5) == first
