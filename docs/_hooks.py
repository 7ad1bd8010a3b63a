"""MkDocs hooks: the pages generated from the code, so they cannot drift from it.

``configuration.md``: the config reference, rendered from the schema (``pipeline.config_doc.render``).
``troubleshooting.md``: its "Every error message" list, read from the package's source: each message an
``ActrecError`` is raised with, by module, with the values it names shown as ``{name}``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG_MARK = "<!-- config reference -->"
ERRORS_MARK = "<!-- every error message -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if CONFIG_MARK in markdown:
        from pipeline.config_doc import render

        reference = render().split("\n", 1)[1]  # the page has its own title
        markdown = markdown.replace(CONFIG_MARK, reference)
    if ERRORS_MARK in markdown:
        markdown = markdown.replace(ERRORS_MARK, error_messages())
    return markdown


def error_messages() -> str:
    """A section per module, a bullet per distinct message raised there."""
    parts = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        messages = sorted(set(_messages(path)))
        if messages:
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            parts.append(f"### `{module}`\n\n" + "\n".join(f"- {m}" for m in messages) + "\n")
    return "\n".join(parts)


def _messages(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ActrecError" and node.args
                and isinstance(node.args[0], (ast.JoinedStr, ast.Constant))):
            text = _template(node.args[0])
            if text:
                yield "`" + " ".join(text.split()).replace("`", "'") + "`"


def _template(node: ast.AST) -> str:
    """A message with each interpolated value shown as ``{expression}``."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    out = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            out.append(str(value.value))
        else:
            out.append("{" + ast.unparse(value.value) + "}")
    return "".join(out)
