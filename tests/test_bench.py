import json

import pytest
from click.testing import CliRunner

from pipeline.bench import ROWS, format_markdown, write_readme_section
from pipeline.cli import cli
from pipeline.errors import ActrecError
from tests.conftest import PROJECT_ROOT


def test_quick_bench_has_every_row(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- BENCH:START -->\nold table\n<!-- BENCH:END -->\nafter\n")
    result = CliRunner().invoke(cli, ["bench", "-c", str(PROJECT_ROOT / "configs" / "synthetic.yaml"),
                                      "--set", "embed.threads=1", "--quick", "--out", str(tmp_path / "bench"),
                                      "--readme", str(readme)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "bench" / "results.json").read_text())
    ids = [row["id"] for row in data["rows"]]
    assert ids == ["1-videos", "1-frames", "2", "3", "4", "5a", "5b", "6"]
    for row in data["rows"]:
        assert row["command"].startswith("actrec bench") and row["value"]
        if row["id"] != "6" or data["device"].startswith("CPU"):
            assert (row["ratio"] is None) == (row["id"] == "6")
    assert all(row["ratio"] > 0 for row in data["rows"] if row["ratio"] is not None)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("after\n")
    assert (tmp_path / "bench" / "results.md").read_text() in text
    assert len(ROWS) == 6


def test_readme_section_needs_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ActrecError, match="markers"):
        write_readme_section(readme, format_markdown({"device": "x", "torch": "y", "quick": True, "rows": []}))
    assert readme.read_text() == "no markers\n"
