"""A real `actrec serve` in a subprocess on a free loopback port, and a tiny trained run for it to serve."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.helpers import PROJECT_ROOT, tiny_overrides

START_TIMEOUT = 240  # seconds: Gradio and torch take long to import on a busy 2-core machine


def tiny_run(dataset_root: Path, work: Path):
    """A run trained and evaluated on the tiny dataset (cache and run under ``work``): its config."""
    from pipeline.config import load_config
    from pipeline.embed.run import embed
    from pipeline.sequence.evaluate import evaluate
    from pipeline.sequence.train import train

    overrides = tiny_overrides(dataset_root) + [f"cache.path={work}/tiny.h5", f"run.dir={work}/run"]
    cfg = load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", overrides)
    embed(cfg)
    train(cfg)
    evaluate(cfg)
    return cfg


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`actrec serve FOLDERS...` started in a subprocess; ``url`` once it answers."""

    def __init__(self, folders, log_path: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        command = [sys.executable, "-m", "pipeline", "serve", *map(str, folders), "--port", str(self.port),
                   "--device", "cpu", *args]
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT)
        self.wait_until_up()

    def log(self) -> str:
        return self.log_path.read_text()

    def status(self, path: str) -> int:
        """HTTP status of a GET of ``path`` (relative to the page)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"actrec serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.status("") == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        self.stop()
        raise AssertionError(f"actrec serve did not answer within {START_TIMEOUT} s:\n{self.log()}")

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C (SIGINT) and wait for the exit; returns the exit status."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
