"""A config key and its checks: ``key()`` declares one (default, help, bounds, what it affects), ``check_value``
is the only place a value is checked.

Here rather than in ``config.py`` so that a plug-in's settings dataclass (``pipeline.registry``) can declare its
keys without importing the schema that composes them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import field
from typing import Any

from pipeline.errors import ActrecError

# What a key's value changes, recorded next to the key so every check derives from the schema:
#   features   the cached features (part of the cache fingerprint: a change needs a new cache)
#   test list  which videos are tested (a checkpoint is evaluated only on the test list it was trained beside)
#   training   what a training run computes (a run continues only with the same values)
#   None       nothing a later stage depends on (paths to inputs, speed and device settings, outputs)
# A key that changes the features or the test list also changes what training computes.
AFFECTS = ("features", "test list", "training")


def key(default, help, choices=None, min=None, max=None, nonempty=False, affects=None, auto=False, inherit=None):
    """A config key: its default, help text, allowed values (a list, or a function that returns it: a registry's
    names are asked for only when a value is checked) and what it ``affects``.

    ``auto``: a whole number in min..max, or the string 'auto' (the code decides). ``inherit``: the key (a field)
    whose value this one takes when it is 'runtime'; any other value is checked as that key's."""
    assert affects in AFFECTS + (None,), affects
    meta = {"help": help, "choices": choices, "min": min, "max": max, "nonempty": nonempty, "affects": affects,
            "auto": auto, "inherit": inherit}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def copy_key(f: dataclasses.Field) -> dataclasses.Field:
    """A fresh field with ``f``'s default and metadata (a field object belongs to one dataclass)."""
    if f.default_factory is not dataclasses.MISSING:
        return field(default_factory=f.default_factory, metadata=f.metadata)
    return field(default=f.default, metadata=f.metadata)


def key_default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def key_choices(f: dataclasses.Field) -> list | None:
    """A key's allowed values (a registry's names are read only here)."""
    choices = f.metadata["choices"]
    return choices() if callable(choices) else choices


def check_value(name: str, value: Any, f: dataclasses.Field, source: str) -> Any:
    """``value`` for key ``name`` (declared by ``f``) as the schema allows it, or one line naming ``source``."""
    meta = f.metadata
    if meta.get("inherit") is not None:
        return value if value == "runtime" else check_value(name, value, meta["inherit"], source)
    default = key_default(f)
    where = f"{source}: {name}"
    if meta.get("auto"):
        if value == "auto":
            return value
        default = meta["min"] if meta["min"] is not None else 0  # otherwise a whole number
    choices = key_choices(f)
    if choices:
        # YAML reads `split: 1` as an int and `--set data.split=1` too; "1" from elsewhere is the same choice.
        lookup = {str(c): c for c in choices}
        if str(value) not in lookup:
            raise ActrecError(f"{where}: {value!r} is not allowed. Allowed values: {', '.join(map(str, choices))}")
        return lookup[str(value)]
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ActrecError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ActrecError(f"{where}: expected a whole number, got {value!r}")
    elif isinstance(default, float):
        value = _number(value, where)
    elif isinstance(default, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ActrecError(f"{where}: expected a string, got {value!r}")
        if meta["nonempty"] and not value.strip():
            raise ActrecError(f"{where}: must not be empty")
    if meta["min"] is not None and value < meta["min"]:
        raise ActrecError(f"{where}: {value!r} is below the minimum {meta['min']}")
    if meta["max"] is not None and value > meta["max"]:
        raise ActrecError(f"{where}: {value!r} is above the maximum {meta['max']}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):
        # YAML 1.1 reads 1e-4 (no dot) as a string; it is still the number the user meant.
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ActrecError(f"{where}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ActrecError(f"{where}: expected a finite number, got {value!r}")
    return value
