"""Stage one's decode workers: chunks in video order from worker processes, failures in place, streaming."""

from __future__ import annotations

import cv2
import h5py
import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.embed.commit import decode_jobs
from pipeline.embed.resize import FrameResize
from pipeline.embed.run import embed
from pipeline.embed.workers import auto_workers, pieces, resolve_workers
from pipeline.errors import ActrecError
from pipeline.inputs.extract import extract_frames
from pipeline.inputs.formats import embed_items
from pipeline.inputs.video import DecodeError, iter_frames_dir
from tests.helpers import PROJECT_ROOT, read_video


def collect(stream) -> dict:
    """index -> (frames concatenated, reason), checking that videos arrive in order, each closed once."""
    out, current = {}, 0
    for piece in stream:
        assert piece.index == current, "pieces out of video order"
        frames, _ = out.get(piece.index, ([], ""))
        if piece.end:
            out[piece.index] = (torch.cat(frames) if frames else None, piece.reason)
            current += 1
        else:
            assert len(piece.frames) <= 5
            out[piece.index] = (frames + [piece.frames], "")
    return out


@pytest.mark.slow
def test_worker_processes_give_the_same_chunks_in_order_with_failures_in_place(tiny_dataset_root, tmp_path,
                                                                                tiny_dataset_config):
    items = embed_items(tiny_dataset_config)[1][:7]
    jobs = decode_jobs(tiny_dataset_config, items)
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"not a video" * 20)
    jobs[3] = ("videos", broken)
    inline = collect(pieces(jobs, 32, 5, workers=0))
    pooled = collect(pieces(jobs, 32, 5, workers=3))
    assert sorted(pooled) == list(range(7))
    for index in range(7):
        if index == 3:
            assert pooled[3][0] is None and "cannot open" in pooled[3][1] == inline[3][1]
            continue
        frames = pooled[index][0]
        assert pooled[index][1] == "" and frames.shape == (12, 3, 32, 32)
        assert torch.equal(frames, inline[index][0])
        assert torch.equal(frames, FrameResize(32)(read_video(jobs[index][1])))


def test_stopping_early_ends_the_workers(tiny_dataset_config):
    jobs = decode_jobs(tiny_dataset_config, embed_items(tiny_dataset_config)[1])
    stream = pieces(jobs, 32, 5, workers=2)
    first = next(stream)
    assert first.index == 0 and len(first.frames) == 5
    import multiprocessing

    children = multiprocessing.active_children()
    assert any(p.name.startswith("actrec-decode") for p in children)
    stream.close()
    assert not any(p.name.startswith("actrec-decode") and p.is_alive() for p in multiprocessing.active_children())


def test_frames_folder_streams_one_frame_at_a_time(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    for i in range(1, 4):
        cv2.imwrite(str(folder / f"{i:06d}.jpg"), np.full((8, 8, 3), 40 * i, np.uint8))
    (folder / "000004.jpg").write_bytes(b"not a jpeg")
    frames = iter_frames_dir(folder)
    first = next(frames)  # read before the damaged file is reached: nothing holds the whole video
    assert first.shape == (8, 8, 3)
    assert next(frames).mean() == pytest.approx(80, abs=3)
    next(frames)
    with pytest.raises(DecodeError, match="000004.jpg: unreadable JPEG"):
        next(frames)


def test_workers_auto_and_values(tiny_dataset_config):
    assert auto_workers() >= 1 and resolve_workers("auto") == auto_workers() and resolve_workers(0) == 0
    assert auto_workers(local_world_size=64) == 1
    cfg = load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", ["embed.workers=auto"])
    assert cfg.embed.workers == "auto"
    assert load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", ["embed.workers=3"]).embed.workers == 3
    with pytest.raises(ActrecError, match="embed.workers"):
        load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", ["embed.workers=many"])
    with pytest.raises(ActrecError, match="embed.workers"):
        load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", ["embed.workers=-1"])


@pytest.mark.slow
def test_cache_is_the_same_with_0_or_3_workers_and_from_frames(tiny_dataset_root, tiny_dataset_config, tmp_path,
                                                               monkeypatch):
    import multiprocessing

    from pipeline.embed.backbones import Backbone

    decoding_while_loading = []

    def build(self, device):  # the decode workers are already starting while the backbone loads
        decoding_while_loading.append(sorted(p.name for p in multiprocessing.active_children()
                                             if p.name.startswith("actrec-decode")))
        return load(self, device)

    load = Backbone.build
    monkeypatch.setattr(Backbone, "build", build)
    cfg = tiny_dataset_config
    cfg.embed.batch_size = 7
    caches = []
    for workers in (0, 3):
        cfg.embed.workers = workers
        cfg.cache.path = str(tmp_path / f"w{workers}.h5")
        summary = embed(cfg)
        assert summary["embedded"] == 32 and set(summary["timing"]) >= {"decode_wait", "submit", "write"}
        caches.append(cfg.cache.path)
    assert decoding_while_loading == [[], ["actrec-decode-0", "actrec-decode-1", "actrec-decode-2"]]
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("actrec-decode")]
    with h5py.File(caches[0], "r") as a, h5py.File(caches[1], "r") as b:
        np.testing.assert_array_equal(a["features"][:], b["features"][:])
        np.testing.assert_array_equal(a["index/lengths"][:], b["index/lengths"][:])
    cfg.data.frames, cfg.embed.source = str(tmp_path / "frames"), "frames"
    extract_frames(cfg)
    cfg.cache.path = str(tmp_path / "frames.h5")
    assert embed(cfg)["embedded"] == 32  # frames folders stream through the same workers
