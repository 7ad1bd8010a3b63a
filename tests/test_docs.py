"""The documentation site builds strictly: every page in the nav, every link and anchor resolves, the API
reference renders from the docstrings, and the generated pages hold what they are generated from."""

import os
import subprocess
import sys

import pytest

from pipeline.config_doc import describe_keys
from tests.helpers import PROJECT_ROOT


def test_the_docs_site_builds_strictly_with_its_generated_pages(tmp_path):
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, env={**os.environ,
                                                                                 "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    reference = (site / "configuration" / "index.html").read_text()
    assert all(f"<code>{key}</code>" in reference for key, *_ in describe_keys())
    errors = (site / "troubleshooting" / "index.html").read_text()
    assert "pipeline.interchange.importing" in errors and "names no video of the split lists" in errors
    api = (site / "api" / "index.html").read_text()
    assert "import_features" in api and "tracking included" in api  # train's docstring, rendered by mkdocstrings
    assert "GRU hidden size per direction" in api  # examples/gru.py, included whole
