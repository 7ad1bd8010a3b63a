"""Tracking that cannot work is refused in one line before any work: an MLflow server that refuses or never
answers (real sockets on 127.0.0.1), a TensorBoard folder that cannot be written."""

import socket
import threading
import time

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.errors import ActrecError
from pipeline.experiments.track import check_tracking
from tests.helpers import PROJECT_ROOT, tiny_overrides

CONFIG = PROJECT_ROOT / "configs" / "synthetic.yaml"


@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a hung MLflow server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed when the block ends: nothing listens there


def test_a_server_that_never_answers_is_refused_within_the_timeout(tmp_path, silent_server):
    cfg = load_config(CONFIG, tiny_overrides(tmp_path) + [f"track.mlflow={silent_server}"])
    started = time.monotonic()
    with pytest.raises(ActrecError, match=r"no MLflow server answered within 1 s") as caught:
        check_tracking(cfg, timeout=1)
    assert time.monotonic() - started < 5
    assert silent_server in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_train_and_evaluate_refuse_an_unreachable_server_first_in_one_line(tmp_path, command):
    # No cache and no checkpoint exist: the tracking check comes before both.
    uri = f"http://127.0.0.1:{closed_port()}"
    sets = tiny_overrides(tmp_path) + [f"track.mlflow={uri}"]
    started = time.monotonic()
    result = CliRunner().invoke(cli, [command, "-c", str(CONFIG), *[a for s in sets for a in ("--set", s)]])
    assert time.monotonic() - started < 10
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert f"track.mlflow={uri}: no MLflow server answered" in result.stderr
    assert not (tmp_path / "run").exists()
