"""What the page reads from run folders and draws from a prediction, without a server."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import ActrecError
from pipeline.predict.prediction import VideoPrediction
from pipeline.serve.media import THUMB_HEIGHT, thumbnail_strip, timeline_rows
from pipeline.serve.runs import ServedRun, find_runs, mistakes, read_predictions
from pipeline.serve.server import host_warning
from tests.helpers import read_video


def make_run(folder):
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("model:\n  name: meanpool\n")
    return folder


def test_a_run_dir_or_a_sweep_folder_of_runs(tmp_path):
    single = make_run(tmp_path / "single")
    sweep = tmp_path / "sweep"
    for name in ("b", "a"):
        make_run(sweep / name)
    (sweep / "leaderboard.md").write_text("")
    runs = find_runs([single, sweep])
    assert [(run.name, run.dir) for run in runs] == [("single", single), ("sweep/a", sweep / "a"),
                                                     ("sweep/b", sweep / "b")]
    with pytest.raises(ActrecError, match="neither a run dir"):
        find_runs([tmp_path / "nothing"])


def test_mistakes_are_the_wrong_scored_videos_most_confident_first(tmp_path):
    run = ServedRun("r", make_run(tmp_path / "r"))
    with pytest.raises(ActrecError, match="predictions.csv: not written yet; run `actrec evaluate"):
        read_predictions(run)
    rows = [["A/v1", "A", "B", "0.6", 0], ["A/v2", "A", "A", "0.9", 0], ["B/v3", "B", "A", "0.8", 0],
            ["B/v4", "B", "", "", 1]]
    with open(run.dir / "predictions.csv", "w", newline="") as f:
        csv.writer(f).writerows([["video", "true_label", "label1", "probability1", "failed"]] + rows)
    wrong = mistakes(read_predictions(run))
    assert [row["video"] for row in wrong] == ["B/v3", "A/v1"]
    assert [row["video"] for row in mistakes(read_predictions(run), "A")] == ["A/v1"]
    (run.dir / "predictions.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ActrecError, match="not a predictions.csv"):
        read_predictions(run)


def test_timeline_follows_the_videos_top_labels_at_window_centres():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.1, 0.1, 0.8]])
    prediction = VideoPrediction(video="v.avi", frames=30, fps=10.0, sequence_length=8, window_frames=10,
                                 hop_seconds=1.0, starts=[0, 10, 20], probabilities=probabilities,
                                 class_names=["a", "b", "c"])
    rows = timeline_rows(prediction, 2)
    assert [row["label"] for row in rows[:2]] == ["c", "a"]  # the video-level ranking: c 0.5, a 0.3
    assert [row["seconds"] for row in rows] == [0.5, 0.5, 1.5, 1.5, 2.5, 2.5]
    assert [row["probability"] for row in rows if row["label"] == "c"] == [0.1, 0.6, 0.8]
    single = VideoPrediction(video="v.avi", frames=8, fps=10.0, sequence_length=8, window_frames=10, hop_seconds=1.0,
                             starts=[0], probabilities=probabilities[:1], class_names=["a", "b", "c"])
    assert [(row["seconds"], row["label"]) for row in timeline_rows(single, 1)] == [(0.0, "a"), (0.8, "a")]


def test_thumbnail_strip(tiny_dataset_root, tmp_path):
    video = next((tiny_dataset_root / "videos").rglob("*.avi"))
    frames = read_video(video)
    out = thumbnail_strip(video, 4, tmp_path / "thumbs" / "strip.jpg")
    from PIL import Image

    with Image.open(out) as strip:
        height, width = frames.shape[1:3]
        assert strip.size == (4 * round(width * THUMB_HEIGHT / height), THUMB_HEIGHT)


def test_other_hosts_are_warned_about_and_bad_folders_refused(tmp_path):
    assert host_warning("127.0.0.1", 7860) is None and host_warning("localhost", 7860) is None
    assert "no login" in host_warning("0.0.0.0", 7860)
    result = CliRunner().invoke(cli, ["serve", str(tmp_path)])
    assert result.exit_code == 2 and f"{tmp_path}: neither a run dir" in result.output


def test_runs_whose_folders_share_a_name_are_served_under_distinct_names(tmp_path):
    """`actrec serve A/run B/run`: both served, each by the shortest path tail that tells them apart."""
    for where in ("A/run", "B/run", "deep/x/A/run", "sweep/run", "sweep/other"):
        make_run(tmp_path / where)
    runs = find_runs([tmp_path / "A" / "run", tmp_path / "B" / "run", tmp_path / "deep" / "x" / "A" / "run",
                      tmp_path / "sweep", tmp_path / "A" / "run"])
    names = {run.name: run.dir for run in runs}
    assert names == {f"{tmp_path.name}/A/run": tmp_path / "A" / "run", "B/run": tmp_path / "B" / "run",
                     "x/A/run": tmp_path / "deep" / "x" / "A" / "run", "sweep/run": tmp_path / "sweep" / "run",
                     "sweep/other": tmp_path / "sweep" / "other"}
    assert len(runs) == len(names) == 5  # every run reachable by its own name, the one given twice served once


def test_a_frame_at_a_time_and_a_clip_between_two_times(tiny_dataset_root, tmp_path):
    from PIL import Image

    from pipeline.inputs.video import video_fps
    from pipeline.serve.media import clip_between, frame_at

    video = next((tiny_dataset_root / "videos").rglob("*.avi"))
    fps, frames = video_fps(video), read_video(video)
    still = frame_at(video, 4 / fps, tmp_path / "still.jpg", height=64)
    assert Image.open(still).size[1] == 64
    clip = clip_between(video, 2 / fps, 6 / fps, tmp_path / "clip.mp4")
    assert len(read_video(clip)) == 5 and read_video(clip).shape[1:] == frames.shape[1:]  # frames 2..6
    with pytest.raises(ActrecError, match="no frames between"):
        clip_between(video, 100.0, 101.0, tmp_path / "none.mp4")
    assert not (tmp_path / "none.mp4").exists()
