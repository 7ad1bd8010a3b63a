import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.inputs.extract import FAILURES, extract_frames
from pipeline.inputs.formats.ucf101 import embed_items, frames_dir
from pipeline.inputs.video import frame_paths
from tests.helpers import PROJECT_ROOT, read_frames_dir, read_video, tiny_overrides


def frames_config(dataset_root: Path, frames: Path, *extra: str):
    overrides = tiny_overrides(dataset_root) + [f"data.frames={frames}"] + list(extra)
    return load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", overrides)


def test_extracts_every_frame_close_to_the_decoded_video(tiny_dataset_root, tmp_path):
    cfg = frames_config(tiny_dataset_root, tmp_path / "frames", "extract.workers=2")
    summary = extract_frames(cfg)
    _, items = embed_items(cfg)
    assert summary["videos"] == summary["extracted"] == len(items) == 32 and summary["failures"] == 0
    assert summary["frames"] == 32 * 12
    for item in items:
        decoded, jpegs = read_video(item.path), read_frames_dir(frames_dir(cfg, item))
        assert jpegs.shape == decoded.shape
        # JPEG halves chroma resolution: at 32x32 with sharp colour edges that costs a few levels on average.
        assert np.abs(jpegs.astype(int) - decoded).mean() < 6.0
    assert [p.name for p in frame_paths(frames_dir(cfg, items[0]))][:2] == ["000001.jpg", "000002.jpg"]
    assert json.loads((tmp_path / "frames" / FAILURES).read_text()) == {"failures": []}


def test_resume_skips_finished_videos_and_redoes_unfinished_ones(tiny_dataset_root, tmp_path):
    cfg = frames_config(tiny_dataset_root, tmp_path / "frames")
    extract_frames(cfg)
    _, items = embed_items(cfg)
    kept = frame_paths(frames_dir(cfg, items[0]))[0]
    mtime = kept.stat().st_mtime_ns
    # An interrupted run leaves a temp folder with some frames beside a target that was never renamed into place.
    unfinished = frames_dir(cfg, items[1])
    temp = unfinished.with_name(f".{unfinished.name}.partial")
    unfinished.rename(temp)
    frame_paths(temp)[-1].unlink()
    summary = extract_frames(cfg)
    assert (summary["extracted"], summary["skipped"], summary["frames"]) == (1, 31, 12)
    assert kept.stat().st_mtime_ns == mtime
    assert not temp.exists() and len(frame_paths(unfinished)) == 12


def test_corrupt_and_empty_videos_are_reported_and_the_run_goes_on(tiny_dataset_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset_root / "videos", root / "videos")
    shutil.copytree(tiny_dataset_root / "splits", root / "splits")
    cfg = frames_config(root, tmp_path / "frames")
    _, items = embed_items(cfg)
    empty, corrupt = items[3], items[20]
    empty.path.write_bytes(b"")
    data = corrupt.path.read_bytes()
    corrupt.path.write_bytes(data[: len(data) // 3])
    summary = extract_frames(cfg)
    assert (summary["extracted"], summary["failures"], summary["frames"]) == (30, 2, 30 * 12)
    failures = {f["name"]: f["reason"] for f in json.loads((tmp_path / "frames" / FAILURES).read_text())["failures"]}
    assert set(failures) == {empty.name, corrupt.name}
    assert "empty file" in failures[empty.name] and "cannot open" in failures[corrupt.name]
    assert not frames_dir(cfg, empty).exists() and not list((tmp_path / "frames").glob("*/.*"))
    again = extract_frames(cfg)
    assert (again["skipped"], again["failures"]) == (30, 2)


def test_frames_from_another_dataset_version_are_refused(tiny_dataset_config):
    from pipeline.errors import ActrecError
    from pipeline.inputs.extract import MANIFEST, check_frames_manifest

    cfg = tiny_dataset_config
    cfg.data.frames = str(Path(cfg.cache.path).parent / "frames")
    extract_frames(cfg)
    assert json.loads((Path(cfg.data.frames) / MANIFEST).read_text())["jpeg_quality"] == cfg.extract.jpeg_quality
    cfg.extract.jpeg_quality = 50
    with pytest.raises(ActrecError, match="jpeg_quality: 95 there, 50 now"):
        check_frames_manifest(cfg)
    with pytest.raises(ActrecError, match="delete"):
        extract_frames(cfg)


def test_frames_folder_without_manifest_is_refused(tiny_dataset_config):
    from pipeline.errors import ActrecError

    cfg = tiny_dataset_config
    cfg.data.frames = str(Path(cfg.cache.path).parent / "frames")
    (Path(cfg.data.frames) / "SomeClass" / "v_SomeClass_g01_c01").mkdir(parents=True)
    with pytest.raises(ActrecError, match="no extract.json"):
        extract_frames(cfg)
