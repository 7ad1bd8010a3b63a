"""`actrec serve` as a user meets it: a real server process on loopback, called through gradio_client."""

from __future__ import annotations

import json
import shutil
import socket
import threading

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.inputs.formats import load_split
from tests.serve.server import Server, tiny_run

pytestmark = pytest.mark.slow

MAX_UPLOAD_MB = 1


@pytest.fixture(scope="module")
def served(tiny_dataset_root, tmp_path_factory):
    """A tiny trained and evaluated run, served with a 1 MB upload limit; stopped after the module."""
    work = tmp_path_factory.mktemp("serve")
    cfg = tiny_run(tiny_dataset_root, work)
    server = Server([cfg.run.dir], work / "server.log", "--set", f"serve.max_upload_mb={MAX_UPLOAD_MB}")
    yield cfg, server
    server.stop()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[1].url, verbose=False)


def predict_json(video, checkpoint, tmp_path) -> dict:
    """What `actrec predict --json` writes for ``video``."""
    out = tmp_path / f"{video.stem}.json"
    result = CliRunner().invoke(cli, ["predict", str(video), "--checkpoint", str(checkpoint), "--json", str(out),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def page_top5(client, video, api_name="/predict") -> list[list]:
    from gradio_client import handle_file

    _, _, top5 = client.predict("run", handle_file(str(video)), api_name=api_name)
    return top5["data"]


def assert_same_top5(page: list[list], expected: list[dict]) -> None:
    assert [label for label, _ in page] == [e["label"] for e in expected]
    assert [p for _, p in page] == pytest.approx([e["probability"] for e in expected], abs=1e-5)


def test_client_prediction_equals_actrec_predict(served, client, tmp_path):
    cfg, server = served
    video = tmp_path / "upload.avi"
    shutil.copy(load_split(cfg).test[0].path, video)
    checkpoint = f"{cfg.run.dir}/checkpoints/best.pt"
    assert_same_top5(page_top5(client, video), predict_json(video, checkpoint, tmp_path)["video_top5"])
    # A test video picked by its name gives the same as that file uploaded.
    item = load_split(cfg).test[1]
    _, _, top5 = client.predict("run", item.name, api_name="/predict_test_video")
    assert_same_top5(top5["data"], predict_json(item.path, checkpoint, tmp_path)["video_top5"])


def test_two_predictions_at_once_each_get_their_own(served, tmp_path):
    from gradio_client import Client

    cfg, server = served
    items = load_split(cfg).test[:2]
    expected = {item.name: predict_json(item.path, f"{cfg.run.dir}/checkpoints/best.pt", tmp_path)["video_top5"]
                for item in items}
    assert expected[items[0].name] != expected[items[1].name]  # else the test could not tell them apart
    got = {}

    def ask(name):
        _, _, top5 = Client(server.url, verbose=False).predict("run", name, api_name="/predict_test_video")
        got[name] = top5["data"]

    threads = [threading.Thread(target=ask, args=(item.name,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for name, top5 in expected.items():
        assert_same_top5(got[name], top5)


def test_paths_outside_the_served_folders_are_refused(served, client):
    from gradio_client.exceptions import AppError

    cfg, server = served
    inside = f"{cfg.run.dir}/confusion_matrix.png"
    assert server.status(f"gradio_api/file={inside}") == 200  # the route works for what may be served
    test_video = load_split(cfg).test[0].path  # a real file, outside the served run dir
    for path in (test_video, f"{cfg.run.dir}/../tiny.h5", "/etc/passwd", f"{cfg.run.dir}/../../../../etc/passwd"):
        assert server.status(f"gradio_api/file={path}") in (403, 404), path
    answer = call_with_a_server_path(server, test_video)  # a path the client never uploaded
    assert answer.startswith("event: error") and "complete" not in answer
    with pytest.raises(AppError, match="not a test video"):
        client.predict("run", f"../../{test_video.stem}", api_name="/predict_test_video")
    with pytest.raises(AppError, match="no run named|not in the list of choices"):
        client.predict("/etc", load_split(cfg).test[0].name, api_name="/predict_test_video")
    assert server.status("") == 200


def call_with_a_server_path(server, path) -> str:
    """What the predict endpoint answers, over plain HTTP, to a video given as a path on the server."""
    import urllib.request

    call = f"{server.url}gradio_api/call/predict"
    video = {"video": {"path": str(path), "meta": {"_type": "gradio.FileData"}}, "subtitles": None}
    request = urllib.request.Request(call, data=json.dumps({"data": ["run", video]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        event = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{call}/{event}", timeout=120) as response:
        return response.read().decode()


def test_garbage_and_oversized_uploads_are_refused_and_the_server_keeps_serving(served, client, tmp_path):
    from gradio_client import handle_file

    cfg, server = served
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(b"this is not a video" * 100)
    with pytest.raises(Exception, match="garbage.avi: OpenCV cannot open it"):
        client.predict("run", handle_file(str(garbage)), api_name="/predict")
    oversized = tmp_path / "big.avi"
    oversized.write_bytes(bytes(MAX_UPLOAD_MB * 1_000_000 + 1))
    with pytest.raises(Exception, match="(?i)exceed|large|413|size"):
        client.predict("run", handle_file(str(oversized)), api_name="/predict")
    video = tmp_path / "fine.avi"
    shutil.copy(load_split(cfg).test[0].path, video)
    assert len(page_top5(client, video)) == min(5, len(load_split(cfg).class_names))  # still serving
    assert server.process.poll() is None


def test_errors_endpoint_lists_the_wrong_test_videos(served, client):
    import csv

    cfg, _ = served
    with open(f"{cfg.run.dir}/predictions.csv", newline="") as f:
        wrong = [row for row in csv.DictReader(f) if row["label1"] != row["true_label"]]
    table, strips, note = client.predict("run", "all classes", api_name="/errors")
    assert sorted(row[0] for row in table["data"]) == sorted(row["video"] for row in wrong)
    probabilities = [row[3] for row in table["data"]]
    assert probabilities == sorted(probabilities, reverse=True)  # most confident mistakes first
    assert len(strips) == len(wrong) and f"{len(wrong)} wrong test videos" in note
    if wrong:
        label = wrong[0]["true_label"]
        table, _, _ = client.predict("run", label, api_name="/errors")
        assert {row[1] for row in table["data"]} == {label}


def test_the_search_tab_finds_what_actrec_search_finds_with_a_thumbnail_each(served, client):
    from gradio_client.exceptions import AppError

    from pipeline.zeroshot.search import search

    cfg, _ = served
    video = load_split(cfg).test[0].name
    gallery, table = client.predict("run", f"like: {video}@0.2", 3, api_name="/search")
    expected = search(cfg, like=f"{video}@0.2", k=3)
    assert [row[1] for row in table["data"]] == [hit.video for hit in expected] and video not in table["data"][0]
    assert [row[3] for row in table["data"]] == pytest.approx([hit.score for hit in expected], abs=1e-6)
    assert len(gallery) == 3 and gallery[0]["caption"].startswith(f"1. {expected[0].video} (")
    with pytest.raises(AppError, match="the query is empty"):
        client.predict("run", "   ", 3, api_name="/search")
    with pytest.raises(AppError, match="a text query needs an OpenCLIP cache"):
        client.predict("run", "a person juggling", 3, api_name="/search")


def test_ctrl_c_stops_the_server_cleanly(served):
    _, server = served
    assert server.interrupt() == 0
    assert "stopped" in server.log()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the closed connections may linger in TIME_WAIT
        sock.bind(("127.0.0.1", server.port))  # nobody listens there any more
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass


