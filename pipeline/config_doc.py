"""Render the config reference (configs/README.md) from the schema, so docs cannot drift from code."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from pipeline.config import catalogue
from pipeline.schema import key_choices, key_default

HEADER = """# Config reference

Every key of the schema (the sections in `pipeline/sections.py`, each composed with the keys of the plug-ins it
names by `pipeline/config.py`), its default, what it allows and what a change to it changes: `features` (a new
feature cache: part of the cache fingerprint), `test list` (which videos are tested: a checkpoint is evaluated
only on the split it was trained beside), `training` (what a run computes: a run continues only with the same
value); `-` changes none of them (paths to inputs, speed and device settings). A key that a plug-in brings
(`with model.name=tcn: ...`) exists only while that plug-in is chosen; one set for another plug-in is refused,
naming the keys the chosen one takes.
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
    """(dotted key, default, what it affects, help with the allowed values) for every key of the schema; a
    plug-in's key says which plug-in takes it (one row per plug-in where their defaults or help differ)."""
    rows = []
    for dotted, owners in catalogue().items():
        by_text: dict = {}
        for owner, f in owners:
            by_text.setdefault((repr(key_default(f)), _allowed_text(f)), (f, []))[1].append(owner)
        for f, named in by_text.values():
            who = ", ".join(n for n in named if n)
            rows.append((dotted, key_default(f), f.metadata["affects"] or "-",
                         (f"with {who}: " if who else "") + _allowed_text(f)))
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
