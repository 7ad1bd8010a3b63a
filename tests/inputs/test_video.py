import cv2
import numpy as np
import pytest

from pipeline.inputs.video import DecodeError, video_fps
from tests.helpers import read_frames_dir, read_video


def write_avi(path, frames=30, size=(32, 24), fps=10, fourcc="MJPG"):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path


def test_read_video_gives_rgb_frames(tmp_path):
    path = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for _ in range(5):
        writer.write(np.dstack([np.zeros((24, 32)), np.zeros((24, 32)), np.full((24, 32), 255)]).astype(np.uint8))
    writer.release()  # pure red in BGR order
    frames = read_video(path)
    assert frames.shape == (5, 24, 32, 3) and frames.dtype == np.uint8
    assert frames[..., 0].mean() > 200 and frames[..., 2].mean() < 50  # RGB: red first
    assert video_fps(path) == pytest.approx(10)


@pytest.mark.parametrize("damage, reason", [
    (lambda data: b"", "empty file"),
    (lambda data: b"not a video at all" * 10, "cannot open"),
    (lambda data: data[: int(len(data) * 0.3)], "truncated: decoded"),  # under half: 90% is kept (test_short_decode)
])
def test_damaged_videos_raise_decode_error(tmp_path, damage, reason):
    good = write_avi(tmp_path / "good.avi")
    bad = tmp_path / "bad.avi"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(DecodeError, match=reason) as info:
        read_video(bad)
    assert str(bad) in str(info.value)


def test_missing_inputs_name_the_path(tmp_path):
    with pytest.raises(DecodeError, match="no such video file"):
        read_video(tmp_path / "nope.avi")
    with pytest.raises(DecodeError, match="actrec extract"):
        read_frames_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DecodeError, match="no .jpg frames"):
        read_frames_dir(tmp_path / "empty")
