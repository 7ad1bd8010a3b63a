"""Render the config reference (configs/README.md) from the schema, so docs cannot drift from code."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import fields
from typing import Any

from pipeline.config import SECTIONS, key_choices

HEADER = """# Config reference

Every key of the one schema (`pipeline/config.py`), its default, what it allows and what a change to it
changes: `features` (a new feature cache: part of the cache fingerprint), `test list` (which videos are tested:
a checkpoint is evaluated only on the split it was trained beside), `training` (what a run computes: a run
continues only with the same value); `-` changes none of them (paths to inputs, speed and device settings).
Set keys in a YAML file (`configs/ucf101.yaml`, `configs/hmdb51.yaml`, `configs/folder.yaml`,
`configs/synthetic.yaml`) or on the command line with
`--set section.key=value` (repeatable; `make ... SET="a.b=1 c.d=2"`). Unknown keys, wrong types and
out-of-range values are refused with a message naming the key and where it came from.
String values may refer to other keys: `{data.name}` is replaced by that key's value after overrides.
`actrec config -c FILE --set ...` prints the resolved config.

This file is generated: `python -m pipeline.config_doc > configs/README.md`.

| key | default | changes | meaning |
|---|---|---|---|
"""


def describe_keys() -> list[tuple[str, Any, str, str]]:
    """(dotted key, default, what it affects, help with the allowed values) for every key of the schema."""
    rows = []
    for section, factory in SECTIONS.items():
        for f in fields(factory()):
            rows.append((f"{section}.{f.name}", getattr(factory(), f.name), f.metadata["affects"] or "-",
                         _allowed_text(f)))
    return rows


def _allowed_text(f: dataclasses.Field) -> str:
    meta = f.metadata
    text = meta["help"]
    if key_choices(f):
        text += f" (one of: {', '.join(map(str, key_choices(f)))})"
    elif meta["min"] is not None or meta["max"] is not None:
        text += f" (range: {'' if meta['min'] is None else meta['min']}..{'' if meta['max'] is None else meta['max']}"
        text += ", or auto)" if meta.get("auto") else ")"
    return text


def render() -> str:
    rows = [f"| `{key}` | `{default}` | {affects} | {text} |" for key, default, affects, text in describe_keys()]
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
