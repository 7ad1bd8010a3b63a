"""`actrec serve` over hostile input, on a real server process on loopback: two runs whose folders share the
name `run` are both served under their own names, and every refusal is one line in the server's log."""

from __future__ import annotations

import shutil
import time

import cv2
import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.inputs.formats import load_split
from tests.helpers import PROJECT_ROOT, tiny_overrides
from tests.serve.server import Server
from tests.serve.test_serve import predict_json

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(tiny_dataset_root, tmp_path_factory):
    """A BiLSTM at A/run and a mean-pool model at B/run (one cache), served together; stopped after the module."""
    from pipeline.embed.run import embed
    from pipeline.sequence.train import train

    work = tmp_path_factory.mktemp("two")
    configs = []
    for where, model in (("A", "bilstm"), ("B", "meanpool")):
        cfg = load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", tiny_overrides(tiny_dataset_root) + [
            f"cache.path={work}/tiny.h5", f"run.dir={work}/{where}/run", f"model.name={model}", "train.epochs=1"])
        embed(cfg)
        train(cfg)
        configs.append(cfg)
    server = Server([c.run.dir for c in configs], work / "server.log")
    yield configs, server
    server.stop()


@pytest.fixture(scope="module")
def client(two_runs):
    from gradio_client import Client

    return Client(two_runs[1].url, verbose=False)


def test_both_runs_are_served_each_under_its_own_name_with_its_own_model(two_runs, client, tmp_path):
    configs, server = two_runs
    assert "serving 2 runs" in server.log()
    item = load_split(configs[0]).test[0]
    tops = {}
    for name, cfg in zip(("A/run", "B/run"), configs):
        _, _, top5 = client.predict(name, item.name, api_name="/predict_test_video")
        expected = predict_json(item.path, f"{cfg.run.dir}/checkpoints/best.pt", tmp_path)["video_top5"]
        assert [p for _, p in top5["data"]] == pytest.approx([e["probability"] for e in expected], abs=1e-5)
        tops[name] = top5["data"]
    assert tops["A/run"] != tops["B/run"]  # two models, not one reached under both names


def mp4(path, frames: int = 20):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 32))
    for i in range(frames):
        writer.write(np.full((32, 32, 3), i * 10, np.uint8))
    writer.release()
    return path


def new_log(server, before: int) -> list[str]:
    time.sleep(0.5)  # the log line is written as the answer goes out
    return server.log()[before:].splitlines()


def test_each_refusal_is_one_log_line_without_a_traceback(two_runs, client, tmp_path):
    from gradio_client import handle_file

    configs, server = two_runs
    notes = tmp_path / "notes.avi"
    notes.write_text("this is not a video\n" * 50)
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(mp4(tmp_path / "whole.mp4").read_bytes()[:400])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    test_video = load_split(configs[0]).test[0].path
    refusals = [("/predict", handle_file(str(notes))), ("/predict", handle_file(str(truncated))),
                ("/predict", handle_file(str(empty))), ("/predict_test_video", f"../../{test_video.stem}"),
                ("/predict_test_video", str(test_video)), ("/predict_test_video", "/etc/passwd")]
    fine = tmp_path / "fine.avi"
    shutil.copy(test_video, fine)
    assert client.predict("A/run", handle_file(str(fine)), api_name="/predict")  # the model loaded: its warnings
    for api, value in refusals:
        before = len(server.log())
        with pytest.raises(Exception) as caught:
            client.predict("A/run", value, api_name=api)
        lines = new_log(server, before)
        assert len(lines) == 1 and "refused" in lines[0], (api, value, lines)
        assert "Traceback" not in server.log()[before:], server.log()[before:]
        assert str(caught.value)  # the page shows why
    assert client.predict("A/run", handle_file(str(fine)), api_name="/predict")  # still serving
    assert "Traceback" not in server.log()
