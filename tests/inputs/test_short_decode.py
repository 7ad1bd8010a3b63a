"""A real xvid AVI cut off mid-file: most of its frames are kept and the cache records the shortfall; too few fail.

The cut keeps the AVI header (100 frames listed) and loses the tail, as an interrupted copy or download does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cache.reader import FeatureCache
from pipeline.cli import cli
from pipeline.embed.run import embed
from pipeline.inputs.video import DecodeError, iter_video_frames
from tests.footage import footage_config, header_count

CUT = "Biking/v_Biking_g01_c01"


def cut_video(real_footage: Path, out: Path, share: float) -> Path:
    """The 100-frame xvid AVI with only its first ``share`` of bytes."""
    data = (real_footage / "long" / "xvid.avi").read_bytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data[:int(len(data) * share)])
    return out


def dataset_with_a_cut_video(real_footage: Path, root: Path, share: float) -> Path:
    """A copy of the UCF-101-format footage whose Biking g01 clip is the long clip cut at ``share``."""
    videos = root / "videos"
    shutil.copytree(real_footage / "ucf101" / "videos", videos)
    cut_video(real_footage, videos / f"{CUT}.avi", share)
    return videos


def test_a_decode_that_ends_early_keeps_most_frames_and_says_so(real_footage, tmp_path):
    told = []
    frames = list(iter_video_frames(cut_video(real_footage, tmp_path / "cut.avi", 0.8), lambda *n: told.append(n)))
    assert header_count(tmp_path / "cut.avi") == 100
    assert told == [(len(frames), 100)] and 50 < len(frames) < 98  # short by more than the 2-frame allowance
    with pytest.raises(DecodeError, match=r"cut.avi: truncated: decoded \d+ of the 100 frames its header lists"):
        list(iter_video_frames(cut_video(real_footage, tmp_path / "cut.avi", 0.3)))
    told.clear()
    assert len(list(iter_video_frames(real_footage / "long" / "xvid.avi", lambda *n: told.append(n)))) == 100
    assert told == []


@pytest.mark.slow
def test_embed_keeps_a_cut_off_video_and_info_lists_it(real_footage, tmp_path):
    videos = dataset_with_a_cut_video(real_footage, tmp_path, 0.8)
    kept = len(list(iter_video_frames(videos / f"{CUT}.avi")))
    cfg = footage_config(real_footage, tmp_path, "ucf101")
    cfg.data.videos = str(videos)
    summary = embed(cfg)
    assert summary["embedded"] == 12 and summary["failed"] == 0
    cache = FeatureCache(cfg.cache.path)
    assert cache.short == {CUT: 100} and cache.lengths[cache.index_of(CUT)] == kept
    result = CliRunner().invoke(cli, ["info", cfg.cache.path])
    assert result.exit_code == 0, result.output
    assert "short:      1 " in result.output and f"  {CUT}: {kept} of 100" in result.output

    # Cut to under half of its frames: the video fails as before, with the reason recorded.
    cut_video(real_footage, videos / f"{CUT}.avi", 0.3)
    cfg.cache.path = str(tmp_path / "cache" / "again.h5")
    assert embed(cfg)["failed"] == 1
    cache = FeatureCache(cfg.cache.path)
    assert cache.short == {} and "truncated: decoded" in cache.failures[CUT]
