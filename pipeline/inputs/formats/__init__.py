"""The dataset-format registry: every module in this folder is one ``data.format``, named by its file name.

A format module declares what the rest of the package asks of a dataset:

- ``NAME``: its ``data.format`` value (the module's file name);
- ``SPLITS``: the ``data.split`` values it understands;
- ``URLS``: ``{"videos": ..., "splits": ...}``, the archives ``actrec download`` fetches when
  ``download.videos_url`` / ``download.splits_url`` are empty (``{}``: nothing to download);
- ``acquire(cfg)``: put the dataset on disk (``actrec download``);
- ``load_split(cfg, check_videos)`` and ``embed_items(cfg, check_videos)``: the labelled video lists;
- ``split_files_signature(cfg)``: a hash of the lists those come from (part of the cache fingerprint);
- ``write_synthetic_splits(splits, names, entries, held_out)``: the split files of the synthetic dataset.

Adding a format is one new file here (plus its tests): ``data.format``'s choices, ``actrec synth --format``
and ``actrec download`` all come from this registry.
"""

from __future__ import annotations

import pkgutil
from importlib import import_module
from types import ModuleType

from pipeline.errors import ActrecError


def names() -> list[str]:
    """The format names, sorted: the modules of this folder (found without importing them)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str) -> ModuleType:
    """The module of format ``name``."""
    if name not in names():
        raise ActrecError(f"data.format={name!r} is not a dataset format; use one of {', '.join(names())}")
    return import_module(f"{__name__}.{name}")


def split_values() -> list:
    """Every ``data.split`` value some format understands, each once: the numbered splits, then the named ones."""
    values = {v for name in names() for v in get(name).SPLITS}
    return sorted(values, key=lambda v: (isinstance(v, str), str(v)))
