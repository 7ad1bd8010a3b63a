"""Start and stop `actrec serve`: Gradio pointed at its own temporary folder, bound to loopback by default."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
from pathlib import Path

from pipeline.config import ServeConfig
from pipeline.errors import ActrecError
from pipeline.serve.runs import find_runs

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def serve(folders, host: str, port: int, settings: ServeConfig, device: str = "auto",
          stop: threading.Event | None = None) -> None:
    """Serve the runs in ``folders`` on http://host:port until Ctrl-C, SIGTERM or ``stop`` is set."""
    runs = find_runs(folders)
    missing = [str(run.checkpoint) for run in runs if not run.checkpoint.is_file()]
    if missing:
        raise ActrecError(f"{missing[0]}: no checkpoint; train that run (`actrec train`) or leave it out")
    if host_warning(host, port):
        log.warning(host_warning(host, port))
    with tempfile.TemporaryDirectory(prefix="actrec-serve-") as workdir:
        # Uploads and every result live here and nowhere else; Gradio reads this when it is imported.
        os.environ["GRADIO_TEMP_DIR"] = workdir
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        page = _page(runs, Path(workdir), settings, device)
        from pipeline.serve.app import THEME
        page.queue(default_concurrency_limit=1)  # one prediction at a time, one model in memory
        page.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, show_error=True,
                    max_file_size=settings.max_upload_mb * 1_000_000,
                    allowed_paths=[str(run.dir) for run in runs], theme=THEME)
        log.info(f"serving {len(runs)} run{'s' if len(runs) != 1 else ''} on http://{host}:{port} (Ctrl-C stops)")
        try:
            _wait(stop or threading.Event())
        finally:
            page.close()
            log.info("stopped")


def host_warning(host: str, port: int) -> str | None:
    """What to tell the user before binding beyond loopback (None on loopback)."""
    if host in LOOPBACK:
        return None
    return (f"--host {host}: the page has no login; anyone who can reach {host}:{port} can use it and upload "
            f"videos to this machine")


def _page(runs, workdir: Path, settings: ServeConfig, device: str):
    from pipeline.serve.app import build_page  # Gradio missing: one line with the install command
    from pipeline.serve.service import PredictionService

    return build_page(PredictionService(runs, workdir, settings, device))


def _wait(stop: threading.Event) -> None:
    """Block until ``stop`` is set, Ctrl-C or SIGTERM (both end the same clean way)."""
    def on_term(signum, frame):
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        log.info("Ctrl-C: stopping")
