"""Shared fixtures: a tiny synthetic dataset and configs that point at it.

Tests use tiny backbones and frames (resnet18 at 32x32, a handful of videos) so the
whole suite runs in a few minutes on 2 CPU cores. `make test` spreads the tests over one
pytest-xdist worker per core, each with one torch thread: every fixture here is per worker
(session scope is a worker's session) or locked where workers share a folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from tests.helpers import PROJECT_ROOT, tiny_overrides

# One thread per worker process (xdist runs one per core); the subprocesses the tests start inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def tiny_config(tmp_path):
    """A validated Config for a tiny dataset under a fresh tmp folder (nothing generated yet)."""
    return load_config(Path(PROJECT_ROOT / "configs" / "synthetic.yaml"), tiny_overrides(tmp_path))


@pytest.fixture(scope="session")
def tiny_dataset_root(tmp_path_factory):
    """A tiny synthetic dataset (real .avi files and split files), generated once per test session.

    Tests must not modify it; copy what you need to change.
    """
    from pipeline.inputs.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tiny")
    generate_dataset(load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", tiny_overrides(root)))
    return root


@pytest.fixture
def tiny_dataset_config(tiny_dataset_root, tmp_path):
    """A Config reading the shared tiny dataset, with cache and run dir in a fresh tmp folder."""
    overrides = tiny_overrides(tiny_dataset_root) + [f"cache.path={tmp_path}/cache/tiny.h5", f"run.dir={tmp_path}/run"]
    return load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", overrides)


@pytest.fixture
def small_disk(tmp_path):
    """Factory: a folder on its own small tmpfs (``size_mib``), to fill up or make read-only for real.

    Mounting needs root (CI runs as root); elsewhere the tests that use it are skipped. Every mount is undone
    at teardown.
    """
    import shutil
    import subprocess

    mounts = []

    def mount(size_mib: int = 16) -> Path:
        if shutil.which("mount") is None or os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(folder)
        return folder

    yield mount
    for folder in reversed(mounts):
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="session")
def real_footage(request, tmp_path_factory):
    """Real clips in UCF-101's, HMDB-51's and the folder format (benchmarks/footage.py), built once and kept in the
    pytest cache (``.pytest_cache/d/actrec-real-footage``) so later sessions reuse them; in a session without the
    cache plugin, built once per session. Tests must not modify it."""
    from filelock import FileLock

    from benchmarks.footage import FootageMissing, build_footage

    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("actrec-real-footage") if cache is not None else tmp_path_factory.mktemp("real-footage")
    try:
        with FileLock(str(Path(root) / "build.lock")):  # xdist workers share the cache folder: one builds, all reuse
            return build_footage(Path(root))
    except FootageMissing as exc:
        if os.environ.get("CI"):  # CI installs the test extra: there the real-footage tests must run, never skip
            pytest.fail(str(exc))
        pytest.skip(str(exc))
