"""The config: its sections composed from the plug-ins it names, YAML loading, ``--set`` overrides, validation.

A section's keys are its common keys (``pipeline/sections.py``) plus the keys of each plug-in its selectors
name: ``model.name: tcn`` brings the ``tcn`` model's keys (``model.latent_dim``, ...), ``train.optimizer: adamw``
its ``train.weight_decay``; the stage sections also take a ``device``/``precision``/``threads`` override of the
``runtime`` section. ``pipeline.schema.check_value`` is the only place a value is checked; a plug-in's
settings may add a cross-key ``check()``. The resolved config (a plain dict from ``to_dict``) travels into every
artefact: cache attributes, run directories and checkpoints.

Layers: a config file, then ``--set`` overrides (then a sweep's run). A key a layer sets that its plug-in does
not take is refused, naming the keys it takes; a plug-in key from a lower layer (the file) that the plug-in a
higher layer chose (``--set model.name=linear``) does not take is dropped, and the log says so.

String values may refer to other keys with ``{section.key}`` placeholders
(``cache.path: cache/{data.name}_{embed.backbone}.h5``); they are filled in
after overrides, so ``--set embed.backbone=resnet18`` moves the cache too.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ActrecError
from pipeline.registry import Plugin, registry
from pipeline.schema import AFFECTS, check_value, copy_key, key_choices, key_default  # noqa: F401 (re-exported)
from pipeline.sections import (  # noqa: F401 (the section classes are re-exported)
    INHERIT,
    SECTIONS,
    STAGES,
    CacheConfig,
    DataConfig,
    EmbedConfig,
    EvalConfig,
    ModelConfig,
    RuntimeConfig,
    ServeConfig,
    TrainConfig,
    stage_runtime_keys,
)

log = logging.getLogger(__name__)


class Config:
    """A resolved config: one dataclass instance per section (``cfg.model.latent_dim``) and where it came from."""

    def __init__(self, source: str = "<defaults>", **sections):
        for name in SECTIONS:
            setattr(self, name, sections[name] if name in sections else section_type(name)())
        self.source = source

    def to_dict(self) -> dict:
        """The resolved config as plain data (what artefacts record)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def updated(self, **sections: dict) -> Config:
        """A validated copy with ``sections`` as one more layer on top (``cfg.updated(train={"epochs": 5},
        model={"name": "tcn"})``): a plug-in chosen there supersedes this config's keys for another one."""
        raw = self.to_dict()
        for section, values in sections.items():
            if not isinstance(values, dict):
                raise ActrecError(f"updated({section}=...): expected a mapping of keys, got {values!r}")
            raw.setdefault(section, {}).update(values)
        origins = {f"{section}.{key}": f"updated({section}.{key}={value!r})"
                   for section, values in sections.items() for key, value in values.items()}
        return config_from_dict(raw, source=self.source, origins=origins)

    def __eq__(self, other) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __reduce__(self):  # composed section classes are made at run time: a copy is rebuilt from plain data
        return config_from_dict, (self.to_dict(), self.source)

    def __repr__(self) -> str:
        return f"Config(source={self.source!r}, {self.to_dict()!r})"


def selectors(section: str) -> dict[str, dataclasses.Field]:
    """The selector keys of ``section`` (``model.name``, ``train.optimizer``, ...) by name."""
    common = {f.name: f for f in fields(SECTIONS[section])}
    return {name: common[name] for name in SECTIONS[section].PLUGINS}


def chosen_plugins(section: str, values: Any) -> list[Plugin]:
    """The plug-ins ``values`` (a section instance or its dict) selects in ``section``."""
    get = values.get if isinstance(values, dict) else lambda name, default: getattr(values, name, default)
    return [registry(kind).get(get(selector, key_default(selectors(section)[selector])), f"{section}.{selector}")
            for selector, kind in SECTIONS[section].PLUGINS.items()]


@functools.lru_cache(maxsize=None)
def section_type(section: str, selection: tuple = ()) -> type:
    """The dataclass of ``section`` with the keys of the plug-ins ``selection`` names (one name per selector, in
    ``PLUGINS`` order; empty: the default plug-ins)."""
    common = SECTIONS[section]
    selection = selection or tuple(key_default(f) for f in selectors(section).values())
    taken, extra = {f.name for f in fields(common)}, []
    for (selector, kind), name in zip(common.PLUGINS.items(), selection):
        settings = registry(kind).get(name, f"{section}.{selector}").settings
        for f in fields(settings) if settings else ():
            if f.name in taken:
                raise ValueError(f"{kind} {name!r} declares {section}.{f.name}, which the section already has")
            taken.add(f.name)
            extra.append((f.name, f.type, copy_key(f)))
    if section in STAGES:
        extra += stage_runtime_keys(section)
    return dataclasses.make_dataclass(common.__name__, extra, bases=(common,)) if extra else common


@functools.lru_cache(maxsize=1)
def catalogue() -> dict[str, list[tuple[str, dataclasses.Field]]]:
    """Every key a config can have, by dotted name, with who declares it: ``""`` for a section's own keys,
    ``"model.name=tcn"`` for a plug-in's. Plug-ins that share a key must agree on what it affects."""
    keys: dict[str, list] = {}
    for section, common in SECTIONS.items():
        for f in fields(section_type(section)) if not common.PLUGINS else fields(common):
            keys.setdefault(f"{section}.{f.name}", []).append(("", f))
        for selector, kind in common.PLUGINS.items():
            for name in registry(kind).names():
                settings = registry(kind).get(name).settings
                for f in fields(settings) if settings else ():
                    keys.setdefault(f"{section}.{f.name}", []).append((f"{section}.{selector}={name}", f))
        if common.PLUGINS and section in STAGES:
            for name, _, f in stage_runtime_keys(section):
                keys.setdefault(f"{section}.{name}", []).append(("", f))
    for dotted, owners in keys.items():
        if len({f.metadata["affects"] for _, f in owners}) > 1:
            raise ValueError(f"the plug-ins that declare {dotted} disagree on what it affects: {owners}")
    return keys


def keys_affecting(*what: str) -> list[str]:
    """Dotted names of the keys (of any plug-in) whose ``affects`` is one of ``what`` (e.g. 'features')."""
    return [dotted for dotted, owners in catalogue().items() if owners[0][1].metadata["affects"] in what]


def stage_runtime(cfg: Config, stage: str) -> RuntimeConfig:
    """The device, precision and threads ``stage`` (embed, train, eval) computes with: the stage's own keys where
    they are set, else the runtime section's."""
    return RuntimeConfig(**{f.name: inherited(getattr(getattr(cfg, stage), f.name), getattr(cfg.runtime, f.name))
                            for f in fields(RuntimeConfig)})


def runtime_value(config: dict, stage: str, name: str):
    """``stage_runtime`` of a resolved config in ``to_dict`` form, for one of its keys (``"device"``)."""
    return inherited(config[stage][name], config["runtime"][name])


def inherited(own, runtime):
    """A stage's runtime value: its own, or the runtime section's where it says 'runtime'."""
    return runtime if own == INHERIT else own


def set_runtime(config: dict, **values) -> dict:
    """``config`` (``to_dict`` form, changed in place) computing with ``values`` (``threads=1``) in every
    stage: the runtime section takes them and the stages' own keys give way to it."""
    for name, value in values.items():
        config["runtime"][name] = value
        for stage in STAGES:
            config[stage][name] = INHERIT
    return config


def runtime_option(cfg: Config, stage: str, name: str) -> str:
    """The key that set ``stage``'s runtime value ``name`` (for messages): ``train.device`` or ``runtime.device``."""
    return f"{stage}.{name}" if getattr(getattr(cfg, stage), name) != INHERIT else f"runtime.{name}"


def config_diff(old: dict, new: dict, *affects: str) -> dict:
    """``{dotted key: (old value, new value)}`` for the keys whose ``affects`` is one of ``affects`` and whose
    values differ between two resolved configs (``Config.to_dict()`` form). Values compare as their text, so a
    config read back from JSON or YAML (1 vs '1') equals the one it was written from; a key one side does not
    have (its plug-in has no such key) reads as None."""
    changes = {}
    for dotted in keys_affecting(*affects):
        section, name = dotted.split(".")
        before, after = old.get(section, {}).get(name), new.get(section, {}).get(name)
        if str(before) != str(after):
            changes[dotted] = (before, after)
    return changes


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = (), *layers) -> Config:
    """Read a YAML config (or the defaults), apply ``section.key=value`` overrides, validate, resolve.

    Each further argument is one more layer of overrides on top: a plug-in chosen there supersedes the keys the
    layers below set for another one (a script's base settings, then its experiment's ``model.name``)."""
    raw, source = read_config_file(path), str(path) if path else "<defaults>"
    for lower in (overrides, *layers[:-1]) if layers else ():
        cfg = config_with_overrides(raw, lower, source)
        raw = without_superseded(apply_overrides(raw, lower)[0], cfg)
    return config_with_overrides(raw, layers[-1] if layers else overrides, source)


def read_config_file(path: str | Path | None) -> dict:
    """The sections of the YAML config at ``path`` as written (placeholders unresolved); {} for the defaults."""
    if path is None:
        return {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ActrecError(f"cannot read config {path}: {exc.strerror}. Pass an existing YAML file "
                          f"(see configs/).") from exc
    return read_yaml(text, path)


def config_with_overrides(raw: dict, overrides: list[str] | tuple, source: str,
                          droppable: frozenset = frozenset()) -> Config:
    """``raw`` (left unchanged) with ``section.key=value`` overrides applied, validated and resolved: a file read
    once serves many configs (a sweep's runs). Overridden keys in ``droppable`` that the chosen plug-in does not
    take are left out rather than refused (a grid's)."""
    raw, origins = apply_overrides(raw, overrides)
    return config_from_dict(raw, source=source, origins=origins, droppable=droppable)


def without_superseded(raw: dict, cfg: Config) -> dict:
    """``raw`` (the layers ``cfg`` was built from, merged) without the keys ``cfg`` dropped as superseded: one
    layer that a further layer (a sweep's run) can go on from."""
    resolved = cfg.to_dict()
    return {section: {key: value for key, value in values.items() if key in resolved[section]}
            if section in resolved and isinstance(values, dict) else values for section, values in raw.items()}


def apply_overrides(raw: dict, overrides: list[str] | tuple) -> tuple[dict, dict]:
    """A copy of ``raw`` with ``section.key=value`` overrides applied (not validated), and where each overridden
    key's value came from (``--set ...``)."""
    raw = copy.deepcopy(raw)
    origins = {}
    for item in overrides:
        origins[_apply_override(raw, item)] = f"--set {item}"
    return raw, origins


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        lines = {}
        for key_node, _ in node.value:
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            if key in lines:
                raise ActrecError(f"'{key}' is given twice (lines {lines[key]} and {line}); keep one")
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, path) -> dict:
    """The sections of a config file; refuses invalid YAML, duplicate keys and a file without any section."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ActrecError(f"{path}: not valid YAML: {exc}") from exc
    except ActrecError as exc:
        raise ActrecError(f"{path}: {exc}") from None
    if raw is None or raw == {}:
        raise ActrecError(f"{path} is empty; a config needs at least one section (data:, embed:, train:, ...). "
                          f"Start from configs/synthetic.yaml or configs/ucf101.yaml (every key: configs/README.md)")
    if not isinstance(raw, dict):
        raise ActrecError(f"{path}: expected a mapping of sections (data:, embed:, ...) at the top level")
    return raw


def config_from_dict(raw: dict, source: str = "<dict>", origins: dict | None = None,
                     droppable: frozenset = frozenset()) -> Config:
    """Build and validate a Config from nested plain data (YAML, a checkpoint's record).

    ``origins`` maps a dotted key to where its value came from (a ``--set``): such keys were set by a layer
    above ``raw``'s other keys (see the module docstring).
    """
    origins = origins or {}
    for section, values in raw.items():
        section_source = next((o for k, o in origins.items() if k.startswith(f"{section}.")), source)
        if section not in SECTIONS:
            raise ActrecError(f"{section_source}: unknown section '{section}'. Allowed: {', '.join(SECTIONS)}")
        if values is not None and not isinstance(values, dict):
            raise ActrecError(f"{source}: section '{section}' must be a mapping of keys, got {values!r}")
    cfg = Config(source, **{section: build_section(section, raw.get(section) or {}, source, origins, droppable)
                            for section in SECTIONS})
    _resolve_placeholders(cfg)
    return cfg


def build_section(section: str, values: dict, source: str, origins: dict, droppable: frozenset = frozenset()):
    """The section instance ``values`` describe: its selectors checked first (they decide which keys exist),
    then every key."""
    picked = []
    for selector, f in selectors(section).items():
        name, value = f"{section}.{selector}", values.get(selector, key_default(f))
        if isinstance(value, str) and ":" in value:  # a plug-in from elsewhere: "module:attribute"
            try:
                registry(SECTIONS[section].PLUGINS[selector]).get(value, name)
            except ActrecError as exc:
                raise ActrecError(f"{origins.get(name, source)}: {exc}") from None
            picked.append(value)
        else:
            picked.append(check_value(name, value, f, origins.get(name, source)))
    instance = section_type(section, tuple(picked))()
    known = {f.name: f for f in fields(instance)}
    common = {f.name for f in fields(SECTIONS[section])}
    for key, value in values.items():
        name = f"{section}.{key}"
        if key in known:
            try:
                setattr(instance, key, check_value(name, value, known[key], origins.get(name, source)))
            except ActrecError as exc:
                if key in common:
                    raise
                raise ActrecError(f"{exc} (with {_chosen(section, instance)})") from None
        elif not _superseded(section, key, origins, droppable):
            raise ActrecError(f"{origins.get(name, source)}: {_unknown_key(section, key, instance)}")
    for plugin in chosen_plugins(section, instance):
        if plugin.settings is not None and hasattr(plugin.settings, "check"):
            try:
                plugin.settings(**{f.name: getattr(instance, f.name) for f in fields(plugin.settings)}).check()
            except ActrecError as exc:
                raise ActrecError(f"{source}: {exc}") from None
    return instance


def _superseded(section: str, key: str, origins: dict, droppable: frozenset) -> bool:
    """Whether ``section.key``, a key the chosen plug-ins do not take, is dropped: a plug-in key set below a layer
    that chose another plug-in, or one of ``droppable``."""
    name = f"{section}.{key}"
    if name not in catalogue():
        return False
    if name in droppable:
        return True
    chosen_above = any(f"{section}.{selector}" in origins for selector in SECTIONS[section].PLUGINS)
    if name in origins or not chosen_above:
        return False
    log.debug("%s: %s is dropped: the %s chosen by %s does not take it", section, name, section,
             ", ".join(origins[f"{section}.{s}"] for s in SECTIONS[section].PLUGINS if f"{section}.{s}" in origins))
    return True


def _chosen(section: str, instance) -> str:
    return ", ".join(f"{section}.{s}={getattr(instance, s)}" for s in SECTIONS[section].PLUGINS)


def _unknown_key(section: str, key: str, instance) -> str:
    name, allowed = f"{section}.{key}", ", ".join(f.name for f in fields(instance))
    owners = [owner for owner, _ in catalogue().get(name, []) if owner]
    if not owners:
        return f"unknown key '{name}'. Allowed in '{section}': {allowed}"
    return (f"'{name}' is not a key of {_chosen(section, instance)} (it belongs to {', '.join(owners)}). Keys of "
            f"'{section}' now: {allowed}")


def _apply_override(raw: dict, item: str) -> str:
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ActrecError(f"--set {item!r}: expected section.key=value, for example --set train.epochs=5")
    dotted, text = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    value = copy.deepcopy(override_value(text))
    if raw.get(section) is None:  # `train:` with nothing under it in the file
        raw[section] = {}
    section_values = raw[section]
    if not isinstance(section_values, dict):
        raise ActrecError(f"--set {item!r}: section '{section}' in the config file is not a mapping")
    section_values[key] = value
    return f"{section}.{key}"


@functools.lru_cache(maxsize=4096)
def override_value(text: str) -> Any:
    """The value of ``--set key=TEXT`` as YAML reads it (remembered: a sweep's runs repeat the same values)."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


_PLACEHOLDER = re.compile(r"\{([a-z_]+)\.([a-z_]+)\}")


def _resolve_placeholders(cfg: Config) -> None:
    for section in SECTIONS:
        target = getattr(cfg, section)
        for f in fields(target):
            value = getattr(target, f.name)
            if isinstance(value, str) and "{" in value:
                setattr(target, f.name, _PLACEHOLDER.sub(lambda m: _lookup(cfg, m, f"{section}.{f.name}"), value))


def _lookup(cfg: Config, match: re.Match, name: str) -> str:
    section, key = match.groups()
    if section not in SECTIONS or not hasattr(getattr(cfg, section), key):
        raise ActrecError(f"{cfg.source}: {name}: placeholder {match.group(0)} names no config key")
    return str(getattr(getattr(cfg, section), key))


def stable_hash(data: Any) -> str:
    """A short hash of plain data that does not depend on dict order."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML next to an output it produced."""
    from pipeline.fileio import write_atomic

    write_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
