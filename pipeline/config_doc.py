"""Render the config reference (configs/README.md) from the schema, so docs cannot drift from code."""

from pipeline.config import describe_keys

HEADER = """# Config reference

Every key of the one schema (`pipeline/config.py`), its default and what it allows.
Set keys in a YAML file (`configs/ucf101.yaml`, `configs/hmdb51.yaml`, `configs/folder.yaml`,
`configs/synthetic.yaml`) or on the command line with
`--set section.key=value` (repeatable; `make ... SET="a.b=1 c.d=2"`). Unknown keys, wrong types and
out-of-range values are refused with a message naming the key and where it came from.
String values may refer to other keys: `{data.name}` is replaced by that key's value after overrides.
`actrec config -c FILE --set ...` prints the resolved config.

This file is generated: `python -m pipeline.config_doc > configs/README.md`.

| key | default | meaning |
|---|---|---|
"""


def render() -> str:
    rows = [f"| `{key}` | `{default}` | {text} |" for key, default, text in describe_keys()]
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render(), end="")
