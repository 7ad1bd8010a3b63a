"""What changes the cached features: the fingerprint a cache is made with, and how two fingerprints differ.

A cache stores the fingerprint of the config that embedded it; stage two and a resumed embed compute
it again from their own config and refuse a cache whose fingerprint differs. Caches written before
must keep matching, so the keys and values below are part of the cache format (docs/cache-format.md).

This module is imported by the storage layer (``pipeline.cache.reader``) for the comparison, which
needs neither torch nor the dataset code; those load only when a fingerprint is computed.
"""

from __future__ import annotations

import functools

from pipeline.config import config_diff, keys_affecting
from pipeline.errors import ActrecError

# The config keys that change the features are marked `affects="features"` in the schema (pipeline/config.py).
# Most are recorded as is under their own name; these are recorded otherwise (see _derived_entries):
DERIVED = {"data.splits", "embed.weights", "embed.preprocess", "embed.resize", "extract.jpeg_quality"}



@functools.lru_cache(maxsize=1)
def feature_keys() -> dict[str, str]:
    """Fingerprint key -> config key, for the keys copied as is (read from the schema when first asked, so the
    storage layer loads no plug-in at import)."""
    return {name.split(".")[1]: name for name in keys_affecting("features")
            if name not in DERIVED}

# Recorded by embed from the machine it ran on (not derivable from a config): a resumed embed must match
# it, so one cache never mixes fp32 and bf16 features; stage two, which may run elsewhere, does not ask.
# Compared only where both sides record it.
# ``device`` is the kind of device the forward pass ran on (``pipeline.embed.fingerprint.device_kind``): shards of
# one cache written on different kinds are joined only on request (``actrec merge-cache --mixed-devices``), and
# the joined cache then records the list of them.
MACHINE_KEYS = {"forward_dtype", "device"}


def stage_two_differences(cached_fingerprint: dict, cached_config: dict, config: dict) -> list[str]:
    """What stage two checks before it reads a cache, without torch or the backbone code: the keys the
    fingerprint copies from the config, and the config as the cache stored it for the keys the fingerprint
    records in derived form (how stage one derived them is ``pipeline.embed.fingerprint``'s business).
    ``data.splits`` is a folder, not content: stage two checks each video it reads against the cache's names and
    labels instead. ``config`` is a resolved config in ``Config.to_dict()`` form."""
    def value(dotted: str):
        section, key = dotted.split(".")
        return config.get(section, {}).get(key)

    lines = [f"{key}: cache has {cached_fingerprint[key]!r}, config gives {value(dotted)!r}"
             for key, dotted in feature_keys().items()
             if key in cached_fingerprint and str(cached_fingerprint[key]) != str(value(dotted))]
    derived = DERIVED - {"data.splits"} - (set() if value("embed.source") == "frames" else {"extract.jpeg_quality"})
    compared = {key: change for key, change in config_diff(cached_config, config, "features").items()
                if key in derived and key.split(".")[1] in cached_config.get(key.split(".")[0], {})}
    return lines + [f"{key}: cache has {old!r}, config gives {new!r}" for key, (old, new) in compared.items()]


def fingerprint_differences(cached: dict, expected: dict, sides: tuple[str, str] | None = None,
                            ignore: frozenset | set = frozenset()) -> list[str]:
    """One line per key whose value differs between a cache and the current config (or, with ``sides``, between
    two caches: the words that introduce each side's value), leaving out the keys in ``ignore``."""
    keys = [k for k in sorted(set(cached) | set(expected))
            if k not in ignore and (k not in MACHINE_KEYS or (k in cached and k in expected))]
    left, right = sides or ("cache has", None)
    source = {k: "this machine (embed.device, embed.precision) gives" for k in MACHINE_KEYS}
    return [f"{k}: {left} {cached.get(k, '<missing>')!r}, {right or source.get(k, 'config gives')} "
            f"{expected.get(k, '<missing>')!r}" for k in keys if cached.get(k) != expected.get(k)]


# Besides the fingerprint, what the features of two cache files must share to sit in one cache (``read_meta``'s
# names for them).
LAYOUT_KEYS = ("class_names", "dim", "dtype", "has_flip")


def compatibility_differences(cached: dict, other: dict, sides: tuple[str, str] | None = None,
                              ignore: frozenset | set = frozenset()) -> list[str]:
    """The one check that two sets of features may go into one cache: one line per difference in the fingerprint,
    the classes, the feature size, dtype and flip. ``cached`` and ``other`` hold ``fingerprint`` and LAYOUT_KEYS (a
    cache's ``read_meta`` or ``FeatureCache.settings()``, or what a writer is about to write); ``sides`` words the
    two values (default: a cache against this embed); ``ignore``: fingerprint keys left out."""
    lines = fingerprint_differences(cached["fingerprint"], other["fingerprint"], sides, ignore)
    left, right = sides or ("cache has", "this embed writes")
    return lines + [f"{key}: {left} {_shown(key, cached[key])}, {right} {_shown(key, other[key])}"
                    for key in LAYOUT_KEYS if cached[key] != other[key]]


def _shown(key: str, value) -> str:
    if key == "class_names":  # a dataset's classes can be hundreds: their count and the first few say enough
        return f"{len(value)} classes ({', '.join(value[:3])}{', ...' if len(value) > 3 else ''})"
    return repr(value)


def mismatch_error(path, differences: list[str]) -> ActrecError:
    """The refusal of a cache made with other settings, listing what differs and what to do."""
    return ActrecError(f"{path} was made with other settings ({'; '.join(differences)}). Set cache.path to a "
                       f"new file (the default path includes dataset, backbone, weights, img_dim and source), "
                       f"or delete {path} and run `actrec embed` again")
