import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.errors import ActrecError
from pipeline.inputs import synthetic
from pipeline.inputs.formats.ucf101 import load_split
from pipeline.inputs.synthetic import (
    MANIFEST,
    class_specs,
    generate_dataset,
    held_out_groups,
    render_clip,
)
from pipeline.inputs.video import video_fps
from tests.helpers import PROJECT_ROOT, read_video, tiny_overrides


def make_config(root: Path, *extra: str):
    return load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", tiny_overrides(root) + list(extra))


def decoded_hashes(videos: Path) -> dict[str, str]:
    return {p.relative_to(videos).as_posix(): hashlib.sha256(read_video(p).tobytes()).hexdigest()
            for p in sorted(videos.glob("*/*.avi"))}


def test_tiny_dataset_has_ucf101_layout_and_official_split_files(tiny_dataset_root, tiny_dataset_config):
    cfg = tiny_dataset_config
    names = [name for name, *_ in class_specs(4)]
    videos = sorted(Path(cfg.data.videos).glob("*/*.avi"))
    assert len(videos) == 4 * 8 * 1
    for path in videos:
        assert re.fullmatch(rf"v_{path.parent.name}_g\d\d_c\d\d\.avi", path.name) and path.parent.name in names
    frames = read_video(videos[0])
    assert frames.shape == (12, 32, 32, 3) and frames.dtype == np.uint8
    assert video_fps(videos[0]) == 25
    splits = Path(cfg.data.splits)
    assert (splits / "classInd.txt").read_bytes() == b"".join(f"{i + 1} {n}\r\n".encode() for i, n in enumerate(names))
    for k in (1, 2, 3):
        train = (splits / f"trainlist{k:02d}.txt").read_bytes().decode()
        test = (splits / f"testlist{k:02d}.txt").read_bytes().decode()
        assert train.count("\r\n") == train.count("\n") == 4 * 6 and test.count("\r\n") == 4 * 2
        assert all(re.fullmatch(r"\w+/v_\w+\.avi [1-4]", line) for line in train.splitlines())
        assert all(re.fullmatch(r"\w+/v_\w+\.avi", line) for line in test.splitlines())
        held_out = {int(g) for g in re.findall(r"_g(\d\d)_", test)}
        assert held_out == set(held_out_groups(8, k)) == set(range(2 * k - 1, 2 * k + 1))
        split = load_split(make_config(tiny_dataset_root, f"data.split={k}"))
        assert split.train and split.val and split.test


def test_held_out_groups_follow_ucf101_for_25_groups():
    assert [held_out_groups(25, k) for k in (1, 2, 3)] == [list(range(1, 8)), list(range(8, 15)),
                                                          list(range(15, 22))]
    for groups in range(3, 26):  # every allowed synth.groups leaves training groups in every split
        blocks = [held_out_groups(groups, k) for k in (1, 2, 3)]
        assert max(blocks[2]) <= groups and groups - len(blocks[0]) >= 2
        assert not set(blocks[0]) & set(blocks[1]) and not set(blocks[1]) & set(blocks[2])


@pytest.mark.parametrize("count", [2, 3, 8, 101])
def test_classes_are_camel_case_and_mostly_time_reversed_pairs(count):
    specs = class_specs(count)
    names = [name for name, *_ in specs]
    assert len(set(names)) == count and all(re.fullmatch(r"(?:[A-Z][a-z]+)+", n) for n in names)
    paired = [s for s in specs if any(o[1:3] == s[1:3] and o[3] != s[3] for o in specs)]
    assert 2 * len(paired) >= count


def test_reversed_class_is_the_forward_class_played_backwards(tiny_dataset_config):
    videos = Path(tiny_dataset_config.data.videos)
    specs = class_specs(4)
    for forward, backward in (specs[0:2], specs[2:4]):
        assert backward[1:3] == forward[1:3] and backward[3] and not forward[3]
        for group in (1, 5):
            clip = read_video(videos / forward[0] / f"v_{forward[0]}_g{group:02d}_c01.avi")
            twin = read_video(videos / backward[0] / f"v_{backward[0]}_g{group:02d}_c01.avi")
            np.testing.assert_array_equal(twin, clip[::-1])  # decoded frames, not only rendered ones
            assert np.abs(clip[0].astype(int) - clip[-1]).mean() > 10  # the motion is visible


def test_clips_of_a_group_share_their_scene(tiny_config):
    spec = class_specs(2)[0]

    def background(group, clip):  # the object moves, so the per-pixel median over time is the scene
        return np.median(render_clip(tiny_config.synth, spec, group, clip).astype(float), axis=0)

    # Medians over pixels too: robust to where the object sat for most of a clip.
    same = np.median(np.abs(background(1, 1) - background(1, 2)))
    other = np.median(np.abs(background(1, 1) - background(2, 1)))
    assert same < other / 3
    assert not np.array_equal(render_clip(tiny_config.synth, spec, 1, 1), render_clip(tiny_config.synth, spec, 1, 2))


def test_same_config_gives_identical_videos(tmp_path, tiny_dataset_config):
    cfg = make_config(tmp_path)
    generate_dataset(cfg)
    assert decoded_hashes(Path(cfg.data.videos)) == decoded_hashes(Path(tiny_dataset_config.data.videos))
    for name in ("classInd.txt", "trainlist02.txt", "testlist03.txt"):
        assert (Path(cfg.data.splits) / name).read_bytes() == (Path(tiny_dataset_config.data.splits) /
                                                               name).read_bytes()
    other = make_config(tmp_path / "other", "synth.seed=1")
    generate_dataset(other)
    assert decoded_hashes(Path(other.data.videos)).keys() == decoded_hashes(Path(cfg.data.videos)).keys()
    assert decoded_hashes(Path(other.data.videos)) != decoded_hashes(Path(cfg.data.videos))


def test_existing_dataset_is_skipped_unless_forced_or_changed(tmp_path, caplog):
    cfg = make_config(tmp_path)
    first = generate_dataset(cfg)
    assert not first["skipped"] and first["videos"] == 32 and first["frames"] == 32 * 12
    video = next(Path(cfg.data.videos).glob("*/*.avi"))
    mtime = video.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="pipeline"):
        assert generate_dataset(cfg)["skipped"] and video.stat().st_mtime_ns == mtime
    assert "skipping" in caplog.text
    assert not generate_dataset(cfg, force=True)["skipped"]
    changed = make_config(tmp_path, "synth.classes=2", "synth.frames=6")
    summary = generate_dataset(changed)
    assert not summary["skipped"] and summary["classes"] == 2
    assert sorted(p.name for p in Path(cfg.data.videos).iterdir()) == sorted(n for n, *_ in class_specs(2))
    assert read_video(next(Path(cfg.data.videos).glob("*/*.avi"))).shape[0] == 6


def test_interrupted_generation_is_not_taken_for_complete(tmp_path, monkeypatch):
    cfg = make_config(tmp_path)
    real_write, written = synthetic._write_video, []

    def write_then_fail(path, frames, fps):
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(path)
        real_write(path, frames, fps)

    monkeypatch.setattr(synthetic, "_write_video", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(cfg)
    assert json.loads((Path(cfg.data.splits) / MANIFEST).read_text())["complete"] is False
    monkeypatch.undo()
    summary = generate_dataset(cfg)
    assert not summary["skipped"] and len(list(Path(cfg.data.videos).glob("*/*.avi"))) == 32
    assert not list(Path(cfg.data.videos).glob("*/.*"))  # no temp files left beside the videos


def test_refuses_to_overwrite_split_files_it_did_not_write(tmp_path):
    cfg = make_config(tmp_path)
    splits = Path(cfg.data.splits)
    splits.mkdir(parents=True)
    (splits / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n")
    for force in (False, True):
        with pytest.raises(ActrecError, match="not written by `actrec synth`"):
            generate_dataset(cfg, force=force)
    assert (splits / "classInd.txt").read_bytes() == b"1 ApplyEyeMakeup\r\n"
