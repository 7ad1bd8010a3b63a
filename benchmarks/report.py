"""The bench's output: results.json and results.md in the out folder, the markdown table, the README section."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import ActrecError

README_START, README_END = "<!-- BENCH:START -->", "<!-- BENCH:END -->"


def format_markdown(result: dict) -> str:
    """The results as a markdown table, preceded by where and with which torch they were measured."""
    lines = [f"Measured by `make bench` on {result['device']}, torch {result['torch']}"
             + (" (quick smoke size)" if result["quick"] else "") + ".", "",
             "| row | what | measured | ratio | target | met | reproduce |", "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:g}"
        lines.append(f"| {row['id']} | {row['name']} | {row['value']} | {ratio} | {row['target']} | {met} | "
                     f"`{row['command']}` |")
    return "\n".join(lines) + "\n"


def write_results(result: dict, out_dir: Path, readme: Path | None = None) -> str:
    """Write ``out_dir``/results.json and results.md (and the table into ``readme``); return the markdown."""
    markdown = format_markdown(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown)
    if readme is not None:
        write_readme_section(readme, markdown)
    return markdown


def check_markers(readme: Path) -> str:
    """The text of ``readme``, which must hold both BENCH markers."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ActrecError(f"{readme}: no '{README_START}' ... '{README_END}' markers to write the table between; "
                          f"add them where the table belongs")
    return text


def write_readme_section(readme: Path, markdown: str) -> None:
    """Replace what stands between the BENCH markers of ``readme`` with the table."""
    text = check_markers(readme)
    head, rest = text.split(README_START, 1)
    readme.write_text(f"{head}{README_START}\n{markdown}{README_END}{rest.split(README_END, 1)[1]}")
