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
from pipeline.tracking import check_tracking
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


def train_cli(cfg_root, *sets):
    from tests.orderdata import order_config, write_order_dataset

    cfg = order_config(cfg_root, "train.threads=1", "eval.threads=1", "train.epochs=1", *sets)
    write_order_dataset(cfg)
    overrides = tiny_overrides(cfg_root) + ["train.threads=1", "eval.threads=1", "train.epochs=1", *sets]
    args = ["-q", "train", "-c", str(CONFIG), *[a for s in overrides for a in ("--set", s)]]
    return cfg, CliRunner().invoke(cli, args)


def assert_one_text_line(result, *words):
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr  # no writer-thread traceback either
    assert "Traceback" not in result.stderr and "b'" not in result.stderr, result.stderr
    assert all(word in result.stderr for word in words), result.stderr


@pytest.mark.slow
def test_a_tensorboard_folder_that_is_a_file_is_one_line(tmp_path):
    from tests.orderdata import order_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "tb").write_text("in the way")
    cfg, result = train_cli(tmp_path)
    assert str(order_config(tmp_path).run.dir) == str(run_dir)
    assert_one_text_line(result, f"cannot write TensorBoard events in {run_dir / 'tb'}", "track.tensorboard=false")


@pytest.mark.slow
def test_a_read_only_tensorboard_folder_is_one_line_with_its_path_as_text(tmp_path, small_disk):
    from tests.helpers import remount_read_only

    disk = small_disk(1)
    remount_read_only(disk)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tb").symlink_to(disk)  # only the TensorBoard folder is read-only
    cfg, result = train_cli(tmp_path)
    assert_one_text_line(result, f"cannot write {tmp_path / 'run' / 'tb'}: the file system is read-only")


# In a process of its own: pytest replaces threading.excepthook, which is what prints a writer thread's traceback.
LOSE_TB_MID_RUN = """
import sys
from pipeline.experiments.tracked import train_run as train
from pipeline.errors import ActrecError
from tests.helpers import remount_read_only
from tests.orderdata import order_config
cfg = order_config(sys.argv[1], "train.threads=1", "eval.threads=1", "train.epochs=3")
try:
    train(cfg, on_epoch=lambda row: remount_read_only(sys.argv[2]) if row["epoch"] == 1 else None)
except ActrecError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.slow
def test_a_tensorboard_folder_lost_mid_run_is_one_line_and_no_thread_traceback(tmp_path, small_disk):
    import subprocess
    import sys

    from tests.orderdata import order_config, write_order_dataset

    disk = small_disk(1)
    write_order_dataset(order_config(tmp_path, "train.epochs=3"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tb").symlink_to(disk)
    # After epoch 1 the TensorBoard folder turns read-only: epoch 2's events fail in TensorBoard's writer thread.
    done = subprocess.run([sys.executable, "-c", LOSE_TB_MID_RUN, str(tmp_path), str(disk)], capture_output=True,
                          text=True, cwd=PROJECT_ROOT, env={"PYTHONPATH": str(PROJECT_ROOT), "TQDM_DISABLE": "1",
                                                            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Exception in thread" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "b'" not in lines[0], done.stderr
    assert f"cannot write {tmp_path / 'run' / 'tb'}: the file system is read-only" in lines[0], done.stderr
