"""Faults a careless or unlucky user meets: a full disk, a read-only folder, a damaged cache.

Full disks are real: a small tmpfs mounted for the test (``small_disk``; needs root, as in CI) and filled with
a filler file. What every stage must do: stop with one line naming the file, commit nothing it did not finish,
and let the next run (with space) go on to the result an uninterrupted run gives.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import pipeline.cache.writer as cache_writer
from pipeline.cache.reader import FeatureCache
from pipeline.cache.writer import FeatureCacheWriter
from pipeline.cli import cli
from pipeline.errors import ActrecError
from tests.helpers import PROJECT_ROOT, fill_disk, read_video, remount_read_only, tiny_overrides

FULL = "no space left on device writing {}; free space and run the command again to resume"
FINGERPRINT = {"backbone": "resnet18", "img_dim": 32}
CLASSES = ["Apply", "Brush"]
DIM = 512


def long_video(index: int) -> np.ndarray:
    """600 frames of 512-d features: 600 KiB in float16, so a new 1 MiB chunk is needed every other video."""
    return np.random.default_rng(index).standard_normal((600, DIM)).astype(np.float32)


def add_videos(writer, indices) -> None:
    for i in indices:
        writer.add(f"Apply/v_{i}", i % 2, long_video(i))


def cache_contents(path) -> dict:
    with h5py.File(path, "r") as f:
        return {name: f[name][:] for name in ("features", "index/names", "index/labels", "index/offsets",
                                              "index/lengths", "index/count", "failures/count")}


def assert_same_cache(a, b) -> None:
    left, right = cache_contents(a), cache_contents(b)
    for name in left:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


def cli_args(command: str, root, *extra: str) -> list[str]:
    args = ["--quiet", command, "-c", str(PROJECT_ROOT / "configs" / "synthetic.yaml")]
    for item in tiny_overrides(root) + list(extra):
        args += ["--set", item]
    return args


def one_line(result) -> str:
    """The error line of a failed command, checked to be its only one, its last, and without a traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.endswith(errors[0] + "\n"), result.stderr
    assert "Traceback" not in result.output and "Exception ignored" not in result.output
    return errors[0]


# -- embed: the cache -------------------------------------------------------------------------------------------

def test_cache_write_failing_inside_hdf5_commits_nothing_and_resumes_exactly(small_disk, tmp_path, monkeypatch,
                                                                             capfd):
    disk = small_disk(24)
    path = disk / "cache.h5"
    monkeypatch.setattr(cache_writer, "SPARE_BYTES", -(1 << 40))  # no check ahead: let HDF5 itself hit the wall
    with pytest.raises(ActrecError) as err:
        with FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM) as writer:
            add_videos(writer, range(3))
            filler = fill_disk(disk)
            add_videos(writer, range(3, 8))
    assert str(err.value) == FULL.format(path)
    assert "Exception ignored" not in capfd.readouterr().err  # HDF5's own complaints do not reach the user
    assert FeatureCache(path).names == [f"Apply/v_{i}" for i in range(3)]
    assert not path.with_name("cache.h5.reserve").exists()

    filler.unlink()
    monkeypatch.undo()
    with FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM) as writer:
        assert writer.done == {f"Apply/v_{i}" for i in range(3)}
        add_videos(writer, range(3, 8))
    with FeatureCacheWriter(tmp_path / "clean.h5", FINGERPRINT, CLASSES, DIM) as writer:
        add_videos(writer, range(8))
    assert_same_cache(path, tmp_path / "clean.h5")


def test_cache_writer_stops_before_a_video_that_does_not_fit(small_disk, caplog):
    disk = small_disk(24)
    path = disk / "cache.h5"
    with FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM) as writer:
        add_videos(writer, range(2))
        filler = fill_disk(disk, leave=cache_writer.SPARE_BYTES + 100_000)  # less than a video plus the spare room
        with pytest.raises(ActrecError, match="no space left on device writing"):
            add_videos(writer, [2])
    assert FeatureCache(path).names == ["Apply/v_0", "Apply/v_1"]
    filler.unlink()
    with caplog.at_level("WARNING", logger="pipeline"), FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM) as writer:
        add_videos(writer, [2])
    assert "stopped abruptly" not in caplog.text  # a clean stop: nothing to recover


def test_cache_writer_on_a_full_disk_says_so_before_starting(small_disk):
    disk = small_disk(8)
    fill_disk(disk)
    with pytest.raises(ActrecError) as err:
        FeatureCacheWriter(disk / "cache.h5", FINGERPRINT, CLASSES, DIM)
    assert str(err.value) == FULL.format(disk / "cache.h5")
    assert not (disk / "cache.h5").exists() and not (disk / "cache.h5.reserve").exists()


@pytest.mark.slow
def test_embed_on_a_disk_that_fills_stops_with_one_line_and_resumes_to_the_same_cache(
        small_disk, tiny_dataset_root, tmp_path, monkeypatch):
    disk = small_disk(24)
    cache = disk / "tiny.h5"
    add = FeatureCacheWriter.add

    def fill_after_two(writer, *args, **kwargs):
        add(writer, *args, **kwargs)
        if len(writer.done) == 2:
            fill_disk(disk)

    with monkeypatch.context() as patch:
        patch.setattr(FeatureCacheWriter, "add", fill_after_two)
        result = CliRunner().invoke(cli, cli_args("embed", tiny_dataset_root, f"cache.path={cache}"))
    assert one_line(result) == "error: " + FULL.format(cache)
    info = CliRunner().invoke(cli, ["info", str(cache)])
    assert info.exit_code == 0 and "videos:     2\n" in info.stdout

    (disk / "filler").unlink()
    again = CliRunner().invoke(cli, cli_args("embed", tiny_dataset_root, f"cache.path={cache}"))
    assert again.exit_code == 0, again.output
    clean = CliRunner().invoke(cli, cli_args("embed", tiny_dataset_root, f"cache.path={tmp_path / 'clean.h5'}"))
    assert clean.exit_code == 0, clean.output
    assert_same_cache(cache, tmp_path / "clean.h5")
    assert len(FeatureCache(cache).names) == 32


# -- synth, extract: videos and frames ------------------------------------------------------------------------

def test_synth_on_a_full_disk_stops_and_never_marks_the_dataset_complete(small_disk, tmp_path):
    disk = small_disk(4)
    filler = fill_disk(disk, leave=40_000)  # room for a few of the 32 tiny videos
    args = cli_args("synth", tmp_path, f"data.videos={disk}/videos")
    line = one_line(CliRunner().invoke(cli, args))
    assert line.startswith(f"error: no space left on device writing {disk}/videos/") and line.endswith(
        ".avi; free space and run the command again to resume")
    manifest = json.loads((tmp_path / "splits" / "synth.json").read_text())
    assert manifest["complete"] is False
    assert not list(disk.rglob(".*.tmp.avi"))  # no half-written video left behind

    filler.unlink()
    again = CliRunner().invoke(cli, args[1:])  # not --quiet: it must say it generates, not skip
    assert again.exit_code == 0, again.output
    assert "skipping" not in again.stderr
    videos = sorted((disk / "videos").rglob("*.avi"))
    assert len(videos) == 32 and all(len(read_video(v)) == 12 for v in videos)


def test_extract_on_a_full_disk_stops_and_resumes(small_disk, tiny_dataset_root, tmp_path):
    disk = small_disk(4)
    filler = fill_disk(disk, leave=60_000)
    args = cli_args("extract", tiny_dataset_root, f"data.frames={disk}/frames", "extract.workers=1")
    line = one_line(CliRunner().invoke(cli, args))
    assert line.startswith(f"error: no space left on device writing {disk}/frames/"), line
    assert not list((disk / "frames").rglob("*.partial"))  # only whole videos' folders stay

    filler.unlink()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    folders = [p for p in (disk / "frames").glob("*/*") if p.is_dir()]
    assert len(folders) == 32 and all(len(list(p.glob("*.jpg"))) == 12 for p in folders)


# -- train, evaluate, predict: checkpoints, metrics, plots, predictions -----------------------------------------

@pytest.fixture(scope="module")
def trained(tiny_dataset_root, tmp_path_factory):
    """A cache and a trained run of the tiny dataset, on an ordinary disk (built once for this module)."""
    from pipeline.config import load_config
    from pipeline.embed.run import embed
    from pipeline.sequence.train import train

    work = tmp_path_factory.mktemp("trained")
    overrides = [f"cache.path={work}/tiny.h5", f"run.dir={work}/run", "train.epochs=1"]
    cfg = load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", tiny_overrides(tiny_dataset_root) + overrides)
    embed(cfg)
    train(cfg)
    return tiny_dataset_root, work


def no_hidden_leftovers(folder) -> bool:
    return not [p for p in folder.rglob(".*") if p.is_file()]


def test_train_on_a_full_or_read_only_disk_is_one_line(trained, small_disk):
    root, work = trained
    disk = small_disk(4)
    fill_disk(disk)
    args = cli_args("train", root, f"cache.path={work}/tiny.h5", f"run.dir={disk}/run", "train.epochs=1")
    line = one_line(CliRunner().invoke(cli, args))
    assert line.startswith(f"error: no space left on device writing {disk}/run"), line
    assert no_hidden_leftovers(disk)

    read_only = small_disk(4)
    remount_read_only(read_only)
    args = cli_args("train", root, f"cache.path={work}/tiny.h5", f"run.dir={read_only}/run", "train.epochs=1")
    line = one_line(CliRunner().invoke(cli, args))
    assert line.startswith(f"error: cannot write {read_only}/run") and "read-only" in line, line


def test_checkpoint_save_on_a_full_disk_keeps_the_old_one(small_disk):
    import torch

    from pipeline.sequence.checkpoint import save_checkpoint

    disk = small_disk(4)
    path = disk / "last.pt"
    save_checkpoint({"epoch": 1, "weights": torch.ones(4)}, path)
    fill_disk(disk)
    with pytest.raises(ActrecError) as err:  # torch.save wraps the OSError in a RuntimeError
        save_checkpoint({"epoch": 2, "weights": torch.zeros(300_000)}, path)
    assert str(err.value) == FULL.format(path)
    assert torch.load(path, weights_only=True)["epoch"] == 1 and no_hidden_leftovers(disk)


def test_evaluate_on_a_full_disk_is_one_line_and_writes_no_metrics(trained, small_disk):
    root, work = trained
    disk = small_disk(8)
    shutil.copytree(work / "run", disk / "run")
    fill_disk(disk)
    args = cli_args("evaluate", root, f"cache.path={work}/tiny.h5", f"run.dir={disk}/run")
    line = one_line(CliRunner().invoke(cli, args))
    assert line.startswith(f"error: no space left on device writing {disk}/run/"), line
    assert not (disk / "run" / "metrics.json").exists() and no_hidden_leftovers(disk)


def test_predict_refuses_its_input_as_output_and_checks_outputs_first(trained, tmp_path, small_disk):
    root, work = trained
    best = str(work / "run" / "checkpoints" / "best.pt")
    video = tmp_path / "clip.mp4"
    frames = read_video(next((root / "videos").rglob("*.avi")))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25, frames.shape[2:0:-1])
    for frame in frames:
        writer.write(frame)
    writer.release()
    original = video.read_bytes()
    link = tmp_path / "link.mp4"
    link.symlink_to(video)
    for out in (video, link, tmp_path / "." / "clip.mp4"):
        line = one_line(CliRunner().invoke(cli, ["predict", str(video), "--checkpoint", best, "--out", str(out)]))
        assert "is the input video; writing it would destroy it" in line
    assert video.read_bytes() == original
    checkpoint = Path(best).read_bytes()
    line = one_line(CliRunner().invoke(cli, ["predict", str(video), "--checkpoint", best, "--json", best]))
    assert "is the checkpoint" in line and Path(best).read_bytes() == checkpoint

    read_only = small_disk(4)
    remount_read_only(read_only)
    json_path = tmp_path / "timeline.json"
    result = CliRunner().invoke(cli, ["predict", str(video), "--checkpoint", best, "--json", str(json_path),
                                      "--out", str(read_only / "annotated.mp4")])
    assert "read-only" in one_line(result)
    assert not json_path.exists()  # nothing written before every output was known to be writable

    full = small_disk(4)
    probe = full / "annotated.mp4"
    fill_disk(full, leave=8_000)  # the output can be created, but its frames do not fit
    result = CliRunner().invoke(cli, ["predict", str(video), "--checkpoint", best, "--out", str(probe)])
    assert one_line(result) == "error: " + FULL.format(probe)
    assert not probe.exists() and no_hidden_leftovers(full)


# -- a damaged cache: one diagnosis everywhere -------------------------------------------------------------------

def test_a_cache_with_attributes_but_no_datasets_names_what_is_missing(tmp_path):
    path = tmp_path / "cache.h5"
    with FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM) as writer:
        add_videos(writer, range(2))
    with h5py.File(path, "r+") as f:
        del f["index/lengths"], f["features"]
    for open_it in (lambda: FeatureCache(path), lambda: FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM)):
        with pytest.raises(ActrecError) as err:
            open_it()
        assert str(err.value) == (f"{path}: the feature cache is damaged (missing features, index/lengths). Delete "
                                  f"it and run `actrec embed` again")
    assert one_line(CliRunner().invoke(cli, ["info", str(path)])) == f"error: {err.value}"


def test_a_truncated_cache_gets_the_same_diagnosis_from_every_command(trained, tmp_path):
    root, work = trained
    cache = tmp_path / "cut.h5"
    data = (work / "tiny.h5").read_bytes()
    cache.write_bytes(data[: len(data) // 2])
    expected = (f"error: {cache}: the feature cache is damaged (the file is shorter than HDF5 recorded: it was cut "
                f"off). Delete it and run `actrec embed` again")
    runs = {"info": ["info", str(cache)]}
    for command in ("embed", "train", "evaluate"):
        runs[command] = cli_args(command, root, f"cache.path={cache}", f"run.dir={work}/run")
    for command, args in runs.items():
        assert one_line(CliRunner().invoke(cli, args)) == expected, command


FAILING_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    import pipeline.cache.writer as cache_writer
    from pipeline.errors import ActrecError
    cache_writer.SPARE_BYTES = -(1 << 40)  # no check ahead: HDF5 itself meets the full disk
    disk = cache_writer.Path(sys.argv[1])
    try:
        with cache_writer.FeatureCacheWriter(disk / "cache.h5", {fingerprint!r}, {classes!r}, {dim}) as writer:
            for i in range(8):
                writer.add(f"Apply/v_{{i}}", 0, np.ones((600, {dim}), np.float32))
                if i == 2:
                    with open(disk / "filler", "wb") as filler:
                        try:
                            while True:
                                filler.write(bytes(1 << 16))
                        except OSError:
                            pass
    except ActrecError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
""").format(fingerprint=FINGERPRINT, classes=CLASSES, dim=DIM)


def test_a_process_whose_cache_write_failed_exits_cleanly(small_disk):
    """HDF5 may crash a process at exit if its file could not be closed; the reserve lets it close."""
    disk = small_disk(24)
    result = subprocess.run([sys.executable, "-c", FAILING_WRITER, str(disk)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == FULL.format(disk / "cache.h5") + "\n"
    assert FeatureCache(disk / "cache.h5").names == [f"Apply/v_{i}" for i in range(3)]
