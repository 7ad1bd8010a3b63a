"""The search space of ``actrec tune``: parameters (``KEY=int|float|cat:...``), their checks against the schema,
and the values one trial draws (only keys its chosen plug-ins take)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path

from pipeline.config import (
    AFFECTS,
    SECTIONS,
    catalogue,
    check_value,
    config_from_dict,
    keys_affecting,
    override_value,
    section_type,
)
from pipeline.errors import ActrecError
from pipeline.experiments.plan import check_varied_keys, run_config

log = logging.getLogger(__name__)


KINDS = ("int", "float", "cat")


TUNABLE_SECTIONS = ("model", "train", "eval")


# The plan checks at most this many combinations of the parameters' points (whole int ranges up to GRID_INTS).
MAX_POINTS, GRID_INTS = 256, 8


@dataclass(frozen=True)
class Param:
    """One searched key: ``int``/``float`` between ``low`` and ``high`` (log-uniform with ``log``), or ``cat``."""
    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        if self.kind == "cat":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    @property
    def spec(self) -> str:
        if self.kind == "cat":
            return "cat:" + ",".join(self.choices)
        return f"{self.kind}:{self.low}:{self.high}" + (":log" if self.log else "")

    def grid(self) -> list:
        """Points of this parameter that the plan checks in combination: every choice; a small int range whole,
        a larger one at its ends and middle; a float range at its ends."""
        if self.kind == "cat":
            return list(self.choices)
        if self.kind == "int":
            low, high = int(self.low), int(self.high)
            return list(range(low, high + 1)) if high - low < GRID_INTS else sorted({low, (low + high) // 2, high})
        return sorted({self.low, self.high})

    def examples(self) -> list[str]:
        """The values a config must accept for every draw of this parameter to be valid."""
        return list(self.choices) if self.kind == "cat" else [str(self.low), str(self.high)]


def tunable_keys() -> list[str]:
    """Keys a tune may search: model/train/eval keys that change what a run computes (never the features, the
    validation or test videos, nor paths and speed settings)."""
    return [k for k in keys_affecting("training") if k.split(".")[0] in TUNABLE_SECTIONS]


def parse_param(item: str, where: str = "--param") -> Param:
    """``model.hidden_dim=int:128:2048:log`` -> a Param; refuses unknown keys, kinds and empty ranges."""
    key, sep, text = item.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or "." not in key or not text:
        raise ActrecError(f"{where} {item!r}: expected section.key=KIND:..., e.g. model.hidden_dim=int:128:2048:log, "
                          f"train.lr=float:1e-5:1e-2:log or model.name=cat:bilstm,meanpool")
    check_tunable(key, f"{where} {item!r}")
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise ActrecError(f"{where} {item!r}: unknown distribution {kind!r}; use int:LOW:HIGH[:log], "
                          f"float:LOW:HIGH[:log] or cat:A,B,...")
    if kind == "cat":
        choices = tuple(c.strip() for c in rest.split(","))
        if not rest or any(not c for c in choices) or len(set(choices)) != len(choices):
            raise ActrecError(f"{where} {item!r}: cat needs distinct values separated by commas, e.g. cat:a,b")
        return Param(key, kind, choices=choices)
    return _numeric_param(key, kind, rest.split(":"), f"{where} {item!r}")


def _numeric_param(key: str, kind: str, parts: list[str], where: str) -> Param:
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise ActrecError(f"{where}: expected {kind}:LOW:HIGH or {kind}:LOW:HIGH:log")
    number = int if kind == "int" else float
    try:
        low, high = number(parts[0]), number(parts[1])
    except ValueError:
        raise ActrecError(f"{where}: LOW and HIGH must be {'whole numbers' if kind == 'int' else 'numbers'}, "
                          f"got {parts[0]!r} and {parts[1]!r}") from None
    log_scale = len(parts) == 3
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ActrecError(f"{where}: LOW and HIGH must be finite numbers, got {parts[0]!r} and {parts[1]!r}")
    if not low <= high:
        raise ActrecError(f"{where}: LOW {low} is above HIGH {high}; write the range low to high")
    if log_scale and low <= 0:
        raise ActrecError(f"{where}: a log range must be above 0 (LOW is {low}); raise LOW or drop :log")
    return Param(key, kind, low, high, log_scale)


def check_tunable(key: str, where: str) -> None:
    """Refuse an unknown key, the keys no compared runs may vary (as sweeps do) and keys that change nothing a
    trial computes."""
    if key not in keys_affecting(*AFFECTS, None):
        raise ActrecError(f"{where}: unknown key {key!r} (every key: configs/README.md)")
    if key not in tunable_keys():
        try:
            check_varied_keys([key], "a tune")
        except ActrecError as exc:
            raise ActrecError(f"{where}: {exc}") from None
        raise ActrecError(f"{where}: {key} cannot vary in a tune: it changes nothing a trial computes; search "
                          f"model.*, train.* and eval.* keys that do ({', '.join(tunable_keys())})")


def parse_space(items, space_file=None) -> tuple[Param, ...]:
    """The ``--param`` items and the lines of ``--space FILE`` (one ``key=KIND:...`` per line, ``#`` comments)."""
    entries = [(item, "--param") for item in items]
    if space_file is not None:
        try:
            text = Path(space_file).read_text()
        except OSError as exc:
            raise ActrecError(f"--space {space_file}: cannot read it ({exc.strerror})") from exc
        for number, line in enumerate(text.splitlines(), 1):
            words = [w for w in line.split("#", 1)[0].split() if w != "--param"]
            entries += [(word, f"--space {space_file} line {number}") for word in words]
    if not entries:
        raise ActrecError("nothing to search: pass --param KEY=KIND:... (repeatable) or --space FILE")
    params = {}
    for item, where in entries:
        param = parse_param(item, where)
        if param.key in params:
            raise ActrecError(f"{where} {item!r}: {param.key} is searched twice; give it once")
        params[param.key] = param
    return tuple(params.values())


def check_key_value(dotted: str, text: str, where: str) -> None:
    """``text`` as a value of ``dotted`` (as ``--set`` reads it), checked against the key's declaration."""
    owners, value = catalogue()[dotted], override_value(text)
    if dotted.split(".")[1] in SECTIONS[dotted.split(".")[0]].PLUGINS and isinstance(value, str) and ":" in value:
        return  # a plug-in from elsewhere ("module:attribute"): resolved when a point is built
    try:
        check_value(dotted, value, owners[0][1], "--param")
    except ActrecError as exc:
        raise ActrecError(f"{where}: {exc}") from None


def suggest(trial, params: tuple, base: dict) -> dict:
    """The trial's values, drawn in the space's order, except that a key's selectors (``model.name`` for
    ``model.hidden_dim``) are drawn before it; a key the plug-ins so chosen do not take is not drawn (a space
    over models with different keys draws only combinations that exist)."""
    by_key, values = {param.key: param for param in params}, {}

    def draw(param) -> None:
        section, name = param.key.split(".")
        if param.key in values:
            return
        for selector in SECTIONS[section].PLUGINS:
            if f"{section}.{selector}" in by_key and f"{section}.{selector}" != param.key:
                draw(by_key[f"{section}.{selector}"])
        selection = tuple(str(values.get(f"{section}.{s}", base[section][s])) for s in SECTIONS[section].PLUGINS)
        if is_selector(param.key) or name in {f.name for f in fields(section_type(section, selection))}:
            values[param.key] = param.suggest(trial)

    for param in params:
        draw(param)
    return values


def is_selector(dotted: str) -> bool:
    section, name = dotted.split(".")
    return name in SECTIONS[section].PLUGINS


def check_space(raw: dict, params, folder: Path, source: str, feature_dim: int, classes: int) -> None:
    """Refuse a space in which every checked point (the parameters' ``grid`` points combined) fails the schema
    or the model's own checks across keys (model.heads must divide model.latent_dim...), with the first point's
    error; warn, in one line, when only some do (the trials that draw them fail and are recorded so)."""
    import itertools

    import torch

    from pipeline.sequence.models import build_model

    points = list(itertools.islice(itertools.product(*(param.grid() for param in params)), MAX_POINTS))
    failures = []
    for values in points:
        point = {param.key: value for param, value in zip(params, values)}
        try:
            resolved = run_config(raw, {key: str(value) for key, value in point.items()}, folder,
                                  f"the point {_describe(point)}", source, frozenset(point))
            with torch.device("meta"):  # the model's checks, without its memory
                build_model(config_from_dict(resolved, source=source), feature_dim, classes)
        except ActrecError as exc:
            failures.append(" ".join(str(exc).split()))
    if failures and len(failures) == len(points):
        raise ActrecError(f"every point of the search space fails ({len(points)} checked), so would every trial: "
                          f"{failures[0]}; change the --param ranges or the base config")
    if failures:
        log.warning(f"{len(failures)} of {len(points)} checked points of the search space fail (trials that draw "
                    f"such a point are recorded as failed), e.g. {failures[0]}")


def shown(params: dict) -> dict:
    """A trial's values as the leaderboard shows them (4 significant digits; the run's config has them all)."""
    return {key: f"{value:.4g}" if isinstance(value, float) else str(value) for key, value in params.items()}


def _describe(params: dict) -> str:
    return " ".join(f"{key.split('.', 1)[1]}={value}" for key, value in shown(params).items())
