"""Sweep planning: a ``--grid`` or ``--runs`` file -> validated, named runs (nothing written, no torch).

Runs are counted before they are expanded (``sweep.max_runs``), every run is checked as a config before any
starts, keys that would change the features, the validation set or the test set are refused (runs ranked by
validation must share one validation set), and two runs with the same parsed settings (``0.001`` and ``1e-3``)
are refused naming both. Planning is linear in the number of runs. ``load_base``, ``check_varied_keys``,
``run_config`` and ``comparable_settings`` are the validation ``actrec tune`` shares.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import (
    SECTIONS,
    Config,
    apply_overrides,
    config_with_overrides,
    keys_affecting,
    read_config_file,
    stable_hash,
    without_superseded,
)
from pipeline.errors import ActrecError
from pipeline.fileio import safe_name
from pipeline.tracking import group_runs

log = logging.getLogger(__name__)

# Keys a sweep names or fixes itself: one cache, run dirs under the sweep folder, the sweep's own settings.
OWN_KEYS = {"run.dir": "the sweep names each run's dir itself", "cache.path": "a sweep trains on one feature cache"}
# Keys that decide which videos validate or test a run without being part of the test-list fingerprint.
EVALUATION_SET_KEYS = ("data.val_fraction", "data.format", "data.test_fraction", "data.group_pattern",
                       "data.videos", "embed.splits")
# What decides what a run computes: two runs equal on these keys are the same run.
COMPUTING = ("features", "test list", "training")
NAME_CHARS = re.compile(r"[^A-Za-z0-9_.=,+-]")  # what a generated run-dir name may hold (one path component)
MAX_NAME = 200


@dataclass
class Variant:
    """One run as written: its ``key=value`` settings (text) and where it was written (for error messages)."""
    values: dict[str, str]
    where: str


@dataclass
class SweepRun:
    """One run of a sweep: its directory name, the keys it varies and the resolved config it trains with."""
    name: str
    varied: dict[str, str]
    config: dict
    where: str = ""

    @property
    def dir(self) -> Path:
        return Path(self.config["run"]["dir"])


def parse_grid(items) -> dict[str, list[str]]:
    """``["model.hidden_dim=256,512", "train.lr=1e-3"]`` -> ``{key: [values]}``, the axes of the cross product
    (``grid_size`` counts it, ``expand_grid`` lists it)."""
    axes = {}
    for item in items:
        key, values = _split_assignment(item, "--grid")
        if key in axes:
            raise ActrecError(f"--grid {item!r}: {key} is given twice; list all its values in one --grid")
        axes[key] = [v.strip() for v in values.split(",")]
        if any(not v for v in axes[key]):
            raise ActrecError(f"--grid {item!r}: an empty value; write values separated by commas, e.g. {key}=1,2")
    return axes


def grid_size(axes: dict[str, list[str]]) -> int:
    return math.prod(len(values) for values in axes.values())


def expand_grid(axes: dict[str, list[str]]) -> list[Variant]:
    """The cross product of the axes, one Variant per run."""
    return [Variant(dict(zip(axes, combo)), "--grid run " + " ".join(f"{k}={v}" for k, v in zip(axes, combo)))
            for combo in itertools.product(*axes.values())]


def parse_runs_file(path) -> list[Variant]:
    """A ``--runs`` file: one run per line, ``key=value`` pairs (optionally written ``--set key=value``);
    blank lines and ``#`` comments are ignored; a key set twice on one line is refused with its line number."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ActrecError(f"--runs {path}: cannot read it ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ActrecError(f"--runs {path}: not a text file ({exc.reason}); write one line of key=value per run") \
            from exc
    variants = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"line {number} of {path}"
        values = {}
        for word in (w for w in line.split("#", 1)[0].split() if w != "--set"):
            key, value = _split_assignment(word, f"--runs {path} line {number}")
            if key in values:
                raise ActrecError(f"--runs {path} line {number}: {key} is set twice ({key}={values[key]} and "
                                  f"{word}); keep one")
            values[key] = value
        if values:
            variants.append(Variant(values, where))
    if not variants:
        raise ActrecError(f"--runs {path} lists no runs; write one line of key=value pairs per run")
    return variants


def _split_assignment(item: str, where: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or "." not in key or not value.strip():
        raise ActrecError(f"{where} {item!r}: expected section.key=value, e.g. model.hidden_dim=256,512")
    return key.strip(), value.strip()


def check_varied_keys(keys, what: str = "a sweep") -> None:
    """Refuse keys that runs compared with one another may not vary: those that change the features (one
    cache), the validation or test set (one validation set ranks them all), or that the sweep sets itself."""
    features = set(keys_affecting("features"))
    evaluation_set = set(keys_affecting("test list")) | set(EVALUATION_SET_KEYS)
    for key in keys:
        if key in OWN_KEYS:
            raise ActrecError(f"{key} cannot vary in {what}: {OWN_KEYS[key]}")
        if key in features:
            raise ActrecError(f"{key} cannot vary in {what}: it changes the features, and {what} trains on one "
                              f"feature cache. Vary training keys (model.*, train.*, eval.*)")
        if key in evaluation_set:
            raise ActrecError(f"{key} cannot vary in {what}: it changes the validation or test set, and runs ranked "
                              f"by validation must share one. To compare splits, run one per split "
                              f"(--set data.split=2)")
        if key.startswith("sweep."):
            raise ActrecError(f"{key} cannot vary in {what}: it is a setting of the sweep itself; pass it with --set")


def run_config(raw: dict, values: dict[str, str], run_dir: Path, where: str, source: str,
               droppable: frozenset = frozenset()) -> dict:
    """The resolved config (``to_dict`` form) of one run: ``raw`` (from ``load_base``: the config file's sections
    with the common ``--set`` overrides applied), the run's own ``values`` and its dir; a bad key or value is one
    line naming ``where``. Keys in ``droppable`` (a grid's) that the run's plug-in does not take are left out: a
    grid crossing ``model.name=linear,tcn`` with ``model.hidden_dim=64,128`` has one linear run."""
    overrides = [f"{k}={v}" for k, v in values.items()] + [f"run.dir={run_dir}"]
    try:
        return config_with_overrides(raw, overrides, source, droppable).to_dict()
    except ActrecError as exc:
        raise ActrecError(f"{where}: {exc}") from None


def comparable_settings(config: dict) -> dict[str, str]:
    """What decides a run's result: every key that affects the features, the test list or training, as text (so
    ``0.001`` and ``1e-3`` read alike). Two runs with equal settings are the same run, and a run's record counts
    only for these settings.

    A run's config has only its plug-ins' keys (``meanpool`` has no ``model.attention``), so runs that differ
    only in a key their plug-in does not take are one run.
    """
    return {dotted: str(config[section][name]) for dotted in computing_keys()
            for section, name in [dotted.split(".")] if name in config[section]}


@functools.lru_cache(maxsize=1)
def computing_keys() -> tuple[str, ...]:
    """The keys of ``comparable_settings`` (read from the schema once)."""
    return tuple(keys_affecting(*COMPUTING))


def check_run_count(count: int, max_runs: int, what: str) -> None:
    if count > max_runs:
        raise ActrecError(f"{what} has {count:,} runs, more than sweep.max_runs={max_runs}; list fewer values, or "
                          f"raise the limit with --set sweep.max_runs={count} if you mean it")


def plan_sweep(config_path, sets=(), grid=(), runs_file=None, name: str | None = None,
               root="runs/sweeps") -> tuple[Path, list[SweepRun]]:
    """The sweep folder and its runs, every run validated before any starts; nothing is written."""
    if bool(grid) == bool(runs_file):
        raise ActrecError("pass --grid KEY=V1,V2 (repeatable) or --runs FILE, one of the two")
    raw, base, source = load_base(config_path, sets)
    if grid:
        axes = parse_grid(grid)
        check_varied_keys(axes)
        check_run_count(grid_size(axes), base.sweep.max_runs, "the --grid")
        variants = expand_grid(axes)
    else:
        variants = parse_runs_file(runs_file)
        check_varied_keys(dict.fromkeys(k for variant in variants for k in variant.values))
        check_run_count(len(variants), base.sweep.max_runs, f"--runs {runs_file}")
    keys = list(dict.fromkeys(k for variant in variants for k in variant.values))
    folder = Path(root) / (safe_name(name, "--name") if name is not None else default_name(base.data.name, keys))
    raw = group_runs(raw, f"sweep/{folder.name}")  # its runs as one MLflow experiment (track.mlflow)
    names = run_names(variants, keys)
    droppable = frozenset(keys) if grid else frozenset()  # a grid crosses every value; a runs file lists its runs
    runs = [SweepRun(run_name, variant.values, run_config(raw, variant.values, folder / run_name,
                                                          variant.where, source, droppable), variant.where)
            for run_name, variant in zip(names, variants)]
    return folder, distinct_runs(runs)


def load_base(config_path, sets) -> tuple[dict, Config, str]:
    """The config every run starts from: its raw sections with ``sets`` applied (for ``run_config``), the
    validated base config (its errors are not a run's) and the source name for messages."""
    raw = read_config_file(config_path)
    source = str(config_path) if config_path else "<defaults>"
    base = config_with_overrides(raw, sets, source)
    raw, _ = apply_overrides(raw, sets)
    return without_superseded(raw, base), base, source


def distinct_runs(runs: list[SweepRun]) -> list[SweepRun]:
    """``runs`` without repeats. Runs that differ only in keys their plug-ins do not take (a grid crossing
    ``model.name=meanpool,bilstm`` with ``model.attention=true,false``) are one run: the first is kept and a
    warning names the others. Any other two runs with the same settings (as parsed: ``train.lr=0.001`` and
    ``train.lr=1e-3``) are refused, naming both."""
    seen, kept = {}, []
    for run in runs:
        other = seen.setdefault(stable_hash(run_identity(run)), run)
        if other is run:
            kept.append(run)
            continue
        differing = {key for key in set(run.varied) | set(other.varied) if run.varied.get(key) != other.varied.get(key)}
        if differing and all(not has_key(run.config, key) for key in differing):
            chosen = {f"{section}.{s}={run.config[section][s]}" for key in differing
                      for section in [key.split(".")[0]] for s in SECTIONS[section].PLUGINS}
            log.warning("%s is the same run as %s: %s does not take %s; training it once", run.where, other.where,
                        ", ".join(sorted(chosen)), ", ".join(sorted(differing)))
            continue
        raise ActrecError(f"{other.where} and {run.where} are the same run ({_written(other)} vs "
                          f"{_written(run)} give the same settings); list each run once")
    return kept


def has_key(config: dict, dotted: str) -> bool:
    section, name = dotted.split(".")
    return name in config.get(section, {})


def run_identity(run: SweepRun) -> dict[str, str]:
    """What tells two runs apart: their comparable settings, and the parsed values of the keys they vary that
    change no result but the user asked to compare (``eval.checkpoint=best,last``, ``train.threads=1,2``)."""
    extra = {key: str(run.config[key.split(".")[0]][key.split(".")[1]]) for key in run.varied
             if key not in computing_keys()}
    return {**comparable_settings(run.config), **extra}


def _written(run: SweepRun) -> str:
    return " ".join(f"{k}={v}" for k, v in run.varied.items()) or "no keys"


def default_name(dataset: str, keys) -> str:
    """``DATA_key1-key2``: the dataset and the short names of the varied keys, as one safe folder name."""
    name = f"{dataset}_" + "-".join(short_keys(keys)[k] for k in keys)
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:MAX_NAME]


def run_names(variants: list[Variant], keys) -> list[str]:
    """``hidden_dim=256_lr=0.001`` per run: its keys (without their section unless two clash) and values, one
    path component; names that clash once made safe (or cut short) get a hash of the run's values."""
    short = short_keys(keys)
    names, taken = [], set()
    for variant in variants:
        name = NAME_CHARS.sub("-", "_".join(f"{short[k]}={v}" for k, v in variant.values.items())) or "base"
        if len(name) > MAX_NAME or name in taken:
            name = f"{name[:MAX_NAME - 17]}-{stable_hash(variant.values)}"
        taken.add(name)
        names.append(name)
    return names


def short_keys(keys) -> dict[str, str]:
    """Each dotted key's name without its section, unless two keys share that name."""
    keys = list(keys)
    counts = {}
    for key in keys:
        tail = key.split(".", 1)[1]
        counts[tail] = counts.get(tail, 0) + 1
    return {k: (k.split(".", 1)[1] if counts[k.split(".", 1)[1]] == 1 else k) for k in keys}
