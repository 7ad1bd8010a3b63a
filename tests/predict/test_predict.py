import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cache.reader import FeatureCache
from pipeline.cli import cli
from pipeline.embed.run import embed
from pipeline.errors import ActrecError
from pipeline.inputs.formats.ucf101 import load_split
from pipeline.predict.predictor import (
    PredictionReport,
    Predictor,
    format_prediction,
    predict,
    predict_video,
    window_indices,
    window_length,
    window_starts,
)
from pipeline.predict.render import frame_windows, write_annotated
from pipeline.sequence.sampling import eval_clip_indices
from pipeline.sequence.train import train
from tests.helpers import read_video


@pytest.fixture(scope="module")
def trained(tiny_dataset_root, tmp_path_factory):
    """A cache and a best.pt trained on the tiny dataset (module-scoped: built once)."""
    from pipeline.config import load_config
    from tests.helpers import PROJECT_ROOT, tiny_overrides

    work = tmp_path_factory.mktemp("predict")
    overrides = tiny_overrides(tiny_dataset_root) + [f"cache.path={work}/tiny.h5", f"run.dir={work}/run"]
    cfg = load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", overrides)
    embed(cfg)
    train(cfg)
    return cfg, work / "run" / "checkpoints" / "best.pt"


def test_window_arithmetic():
    assert window_starts(10, 16, 4) == [0]
    assert window_starts(16, 16, 4) == [0]
    assert window_starts(20, 8, 4) == [0, 4, 8, 12]
    assert window_starts(21, 8, 4) == [0, 4, 8, 12, 13]  # the tail is always covered
    idx = window_indices(5, 8, [0], length=8)
    assert idx.tolist() == [[0, 0, 1, 1, 2, 3, 3, 4]]  # spread evenly (floor(j * 5 / 8)), as in training
    assert window_indices(21, 8, [13], length=8)[0].tolist() == list(range(13, 21))
    # A window longer than the clip is sampled as an evaluation clip: the centres of its segments.
    assert window_indices(100, 40, [10, 60], length=8).tolist() == [
        (10 + eval_clip_indices(40, 8, 1)[0]).tolist(), (60 + eval_clip_indices(40, 8, 1)[0]).tolist()]


def test_windows_span_the_same_seconds_at_any_frame_rate():
    """A 50 fps and a 25 fps video get windows of the same duration: the training clips' average time span."""
    clip_seconds = 6.4
    for fps in (25.0, 50.0, 29.97):
        frames = window_length(clip_seconds, fps)
        assert abs(frames / fps - clip_seconds) <= 0.5 / fps
    assert window_length(clip_seconds, 50.0) == 2 * window_length(clip_seconds, 25.0)


def test_each_frame_shows_the_window_with_the_nearest_centre():
    rng = np.random.default_rng(0)
    for _ in range(50):
        frames, window = int(rng.integers(1, 300)), int(rng.integers(1, 80))
        starts = window_starts(frames, window, int(rng.integers(1, 20)))
        centres = np.asarray(starts) + min(window, frames) / 2
        brute = np.abs(np.arange(frames)[:, None] + 0.5 - centres[None, :]).argmin(axis=1)
        assert frame_windows(frames, starts, window).tolist() == brute.tolist()


def test_prediction_matches_evaluate_path(trained):
    cfg, best = trained
    predictor = Predictor(best, "cpu")
    item = load_split(cfg).test[0]
    cache = FeatureCache(cfg.cache.path)
    row = cache.index_of(item.name)
    features = predictor.video_features(item.path)
    np.testing.assert_allclose(features, cache.sequence(row), rtol=1e-2, atol=1e-2)
    clip = eval_clip_indices(len(features), cfg.train.sequence_length, 1)
    ours = predictor.clip_probabilities(features, clip)
    with torch.inference_mode():
        logits = predictor.model(torch.from_numpy(cache.frames(row, clip[0]))[None])
    np.testing.assert_allclose(ours[0], torch.softmax(logits.double(), -1)[0].numpy(), atol=1e-3)


def test_json_schema_and_annotated_video(trained, tmp_path):
    cfg, best = trained
    video = load_split(cfg).test[0].path
    report = predict(video, best, out=str(tmp_path / "out.mp4"), json_path=str(tmp_path / "out.json"), hop=0.08,
                     device="cpu")
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["frames"] == len(read_video(video)) == report.predictions[0].frames
    assert data["video_top5"] == report.predictions[0].video_top(5) and report.failures == {}
    assert report.outputs == {"annotated video": str(tmp_path / "out.mp4"), "JSON timeline": str(tmp_path / "out.json")}
    printed = format_prediction(report).splitlines()
    ranked = printed[1:1 + len(data["video_top5"])]
    assert [line.split()[1] for line in ranked] == [e["label"] for e in data["video_top5"]]
    assert printed[-1] == f"  JSON timeline: {tmp_path / 'out.json'}"
    # The training clips spanned whole videos of this dataset: a window spans as long, at this video's rate.
    clip_seconds = torch.load(best, weights_only=True)["clip_seconds"]
    assert clip_seconds == pytest.approx(cfg.synth.frames / cfg.synth.fps)
    assert data["window_frames"] == round(clip_seconds * data["fps"])
    assert len(data["windows"]) == len(window_starts(data["frames"], data["window_frames"], 2))  # 0.08 s at 25 fps
    window = data["windows"][0]
    assert set(window) == {"start_frame", "end_frame", "start_s", "end_s", "top"}
    assert window["end_frame"] == min(data["window_frames"], data["frames"]) - 1
    probabilities = [e["probability"] for e in window["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
    assert len(data["video_top5"]) == min(5, len(FeatureCache(cfg.cache.path).class_names))
    assert {e["label"] for e in data["video_top5"]} <= set(FeatureCache(cfg.cache.path).class_names)
    annotated = read_video(tmp_path / "out.mp4")
    assert annotated.shape[0] == data["frames"] and annotated.shape[2] >= 320  # readable at 320 wide


def test_gif_is_size_limited(trained, tmp_path):
    from PIL import Image

    cfg, best = trained
    video = load_split(cfg).test[0].path
    result = predict_video(Predictor(best, "cpu"), video, hop=0.16)
    written = write_annotated(video, result, tmp_path / "out.gif", topk=3, gif_max_frames=5)
    with Image.open(tmp_path / "out.gif") as gif:
        assert gif.n_frames == written <= 5 and written == len(range(0, result.frames, -(-result.frames // 5)))


def test_short_and_portrait_videos(trained, tmp_path):
    _, best = trained
    path = tmp_path / "portrait.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (24, 40))
    for t in range(3):  # shorter than one window
        writer.write(np.full((40, 24, 3), 40 * t, np.uint8))
    writer.release()
    result = predict(path, best, out=str(tmp_path / "p.mp4"), json_path=str(tmp_path / "p.json"), device="cpu")
    assert result.predictions[0].frames == 3 and len(result.predictions[0].starts) == 1
    annotated = read_video(tmp_path / "p.mp4")
    assert annotated.shape[0] == 3 and annotated.shape[2] >= 320 and annotated.shape[1] > annotated.shape[2]


def test_folder_gives_csv(trained, tmp_path):
    cfg, best = trained
    folder = tmp_path / "videos"
    folder.mkdir()
    for item in load_split(cfg).test[:2]:
        shutil.copy(item.path, folder / item.path.name)
    (folder / "broken.avi").write_bytes(b"not a video")
    report = predict(folder, best, device="cpu")
    lines = (folder / "predictions.csv").read_text().splitlines()
    assert isinstance(report, PredictionReport) and len(report.predictions) == 2
    assert list(report.failures) == [str(folder / "broken.avi")]
    assert report.outputs == {"CSV of video-level top-5": str(folder / "predictions.csv")}
    assert len(lines) == 4 and lines[0].startswith("video,error,label1,probability1")
    top1 = {Path(p.video).name: p.video_top(1)[0]["label"] for p in report.predictions}
    assert {line.split(",")[0]: line.split(",")[2] for line in lines[1:] if "broken" not in line} == top1
    printed = format_prediction(report)
    assert "broken.avi: skipped" in printed and all(f"{name}: {label}" in printed for name, label in top1.items())


def test_bad_inputs_give_one_line_and_write_nothing(trained, tmp_path):
    cfg, best = trained
    video = load_split(cfg).test[0].path
    runner = CliRunner()
    missing = runner.invoke(cli, ["predict", str(tmp_path / "nope.avi"), "--checkpoint", str(best)])
    assert missing.exit_code == 2 and "no such video" in missing.output
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(best.read_bytes()[:1000])
    out = tmp_path / "o.mp4"
    bad = runner.invoke(cli, ["predict", str(video), "--checkpoint", str(truncated), "--out", str(out)])
    assert bad.exit_code == 2 and "truncated or corrupt" in bad.output and isinstance(bad.exception, SystemExit)
    assert not out.exists()
    ckpt = torch.load(best, weights_only=True)
    ckpt["class_names"] = ckpt["class_names"] + ["Extra"]
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    with pytest.raises(ActrecError, match="do not fit"):
        Predictor(other, "cpu")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    wrong_suffix = runner.invoke(cli, ["predict", str(video), "--checkpoint", str(best),
                                       "--out", str(tmp_path / "x.csv")])
    assert wrong_suffix.exit_code == 2 and "MP4 or a GIF" in wrong_suffix.output


def test_labelling_frames_of_an_hour_long_video_needs_little_memory():
    """One hour at 25 fps with a window every 0.5 s: frames x windows would be 90,000 x 7,500 (5.4 GB as
    float64); the nearest-centre search keeps a few arrays the length of the video."""
    import tracemalloc

    frames, window = 90_000, 160
    starts = window_starts(frames, window, 12)
    tracemalloc.start()
    nearest = frame_windows(frames, starts, window)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(starts) > 7000 and nearest[0] == 0 and nearest[-1] == len(starts) - 1
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MiB"
