"""Sweeps under kills, as a user (or the out-of-memory killer) does them to the real command: a worker killed by
signal 9 fails its run alone, kill -9 of the sweep takes its workers with it, Ctrl-C ends with one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT, tiny_overrides
from tests.orderdata import order_config, write_order_dataset

CONFIG = PROJECT_ROOT / "configs" / "synthetic.yaml"
LONG = "train.epochs=5000"  # a run still training when the test kills something


def start_sweep(tmp_path: Path, lines: list[str], jobs: int) -> subprocess.Popen:
    """`actrec sweep` of ``lines`` (a runs file) in its own session, as a terminal would run it; its output goes
    to files (a pipe would keep the test waiting on any process that outlives the sweep)."""
    write_order_dataset(order_config(tmp_path))
    runs = tmp_path / "runs.txt"
    runs.write_text("\n".join(lines) + "\n")
    sets = tiny_overrides(tmp_path) + ["train.batch_size=8", "train.epochs=2", "train.threads=1", "eval.threads=1"]
    command = [sys.executable, "-m", "pipeline", "sweep", "-c", str(CONFIG), "--runs", str(runs), "--jobs",
               str(jobs), "--name", "faults"] + [a for s in sets for a in ("--set", s)]
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        return subprocess.Popen(command, cwd=tmp_path, start_new_session=True, stdout=out, stderr=err,
                                env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})


def finish(sweep: subprocess.Popen, tmp_path: Path, timeout: float) -> tuple[str, str]:
    """Wait for the sweep to exit; its stdout and stderr."""
    sweep.wait(timeout=timeout)
    return (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()


@pytest.fixture
def leftovers():
    """Pids a failing test leaves running, killed at its end so they do not outlive it."""
    pids = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def running_pids(folder: Path, count: int, sweep: subprocess.Popen, timeout: float = 240) -> list[int]:
    """The worker pids of ``count`` runs once each has recorded itself running and written a checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert sweep.poll() is None, (folder.parent.parent.parent / "err.txt").read_text()
        pids = []
        for record_path in folder.glob("*/sweep.json"):
            try:
                record = json.loads(record_path.read_text())
            except ValueError:
                continue
            if record["status"] == "running" and (record_path.parent / "checkpoints" / "last.pt").exists():
                pids.append(record["pid"])
        if len(pids) >= count:
            return pids
        time.sleep(0.2)
    raise AssertionError("the runs did not start")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def wait_gone(pids, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def files_of(folder: Path) -> dict:
    return {path: (path.stat().st_mtime_ns, path.stat().st_size) for path in folder.rglob("*") if path.is_file()}


@pytest.mark.slow
def test_a_worker_killed_by_signal_9_fails_its_run_and_the_others_go_on(tmp_path, leftovers):
    sweep = start_sweep(tmp_path, [f"model.name=meanpool {LONG}", "model.name=tcn"], jobs=1)
    (pid,) = running_pids(tmp_path / "runs" / "sweeps" / "faults", 1, sweep)
    os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer does
    out, err = finish(sweep, tmp_path, timeout=300)
    assert sweep.returncode == 2 and "Traceback" not in err, err
    assert "failed (the sweep goes on): worker killed, signal 9: out of memory?" in err
    assert err.strip().splitlines()[-1].startswith("error: 1 of 2 runs failed")
    assert "| 1 | tcn |" in out and "worker killed, signal 9: out of memory?" in out


@pytest.mark.slow
def test_kill_9_of_the_sweep_takes_its_workers_with_it_and_nothing_is_written_after(tmp_path, leftovers):
    sweep = start_sweep(tmp_path, [f"model.name=meanpool {LONG}", f"model.name=tcn {LONG}"], jobs=2)
    folder = tmp_path / "runs" / "sweeps" / "faults"
    pids = running_pids(folder, 2, sweep)
    leftovers += pids
    os.kill(sweep.pid, signal.SIGKILL)
    sweep.wait()
    assert wait_gone(pids, timeout=3), "a worker outlived the sweep"
    before = files_of(folder)
    time.sleep(1.5)
    assert files_of(folder) == before
    assert wait_gone([sweep.pid], timeout=10)
    with pytest.raises(ProcessLookupError):  # nothing of the sweep's session is left (resource tracker included)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            os.killpg(sweep.pid, 0)
            time.sleep(0.1)


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_with_one_line_and_no_traceback(tmp_path, leftovers):
    sweep = start_sweep(tmp_path, [f"model.name=meanpool {LONG}", f"model.name=tcn {LONG}"], jobs=2)
    folder = tmp_path / "runs" / "sweeps" / "faults"
    pids = running_pids(folder, 2, sweep)
    leftovers += pids
    os.killpg(sweep.pid, signal.SIGINT)  # what the terminal sends to the whole foreground group
    _, err = finish(sweep, tmp_path, timeout=120)
    assert sweep.returncode == 130, err
    assert "Traceback" not in err and "resource_tracker" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == "interrupted; finished work is kept, run the command again to resume"
    assert wait_gone(pids, timeout=3)
    assert "not run yet" in (folder / "leaderboard.md").read_text()


@pytest.mark.slow
def test_a_worker_killed_while_idle_is_replaced_for_the_next_run(tmp_path, leftovers):
    from pipeline.experiments.execute import LocalWorkers
    from pipeline.experiments.plan import plan_sweep

    # Runs on a cache that does not exist: each fails in its worker at once, which is all this test needs.
    _, runs = plan_sweep(CONFIG, tiny_overrides(tmp_path), grid=["model.name=meanpool,tcn"], name="idle",
                         root=tmp_path / "sweeps")
    workers = LocalWorkers([], threads=1)
    try:
        workers.submit(runs[0])
        first = workers.next_done()
        (idle,) = workers.idle
        leftovers.append(idle.process.pid)
        os.kill(idle.process.pid, signal.SIGKILL)
        idle.process.join()
        workers.submit(runs[1])
        second = workers.next_done()
    finally:
        workers.stop()
    assert first["status"] == second["status"] == "failed" and "tiny.h5" in second["error"]
    assert second["pid"] != first["pid"] and second["name"] == runs[1].name
