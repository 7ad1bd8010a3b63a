"""One registry mechanism for every kind of plug-in: a name, its settings dataclass, and what builds it.

A kind (``model``, ``format``, ``sampler``, ``optimizer``, ``schedule``, ``backbone``, ``probe``) is one
``Registry``; a plug-in registers under a name with the dataclass of its own config keys (built with
``pipeline.schema.key``, so each key carries its default, bounds, help and what it ``affects``) and a target:
the callable that builds it, or ``"module:attribute"`` (or a module's name) imported only when it is built::

    @register_model("mylstm", dataclass=MyLSTMConfig)
    class MyLSTM(nn.Module): ...

    MODELS.register("bilstm", dataclass=BiLSTMConfig, build="pipeline.sequence.networks:BiLSTM")

The built-ins of a kind register when the registry is first asked (their modules are imported then; none of
them imports torch, so listing names, validating a config and planning a sweep stay light). Plug-ins from other
packages register through the entry-point group ``actrec.<kind>s`` (``mygru = my_lab.models:GRU``: the entry
point's name is the plug-in's; importing its module may register it, else the object is the builder and its
``Config`` dataclass its settings), or are named as ``"module:attribute"`` wherever a name is asked for
(``model.name=my_lab.models:GRU``).
The config schema composes a section from the plug-ins its selector keys name (``model.name`` picks the
``model`` plug-in whose keys join the ``model`` section).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable

from pipeline.errors import ActrecError

log = logging.getLogger(__name__)

# Where each kind's built-ins live: the module, or every public module of the package, registers them.
BUILTINS = {
    "format": "pipeline.inputs.formats",
    "backbone": "pipeline.embed.backbones.libraries",
    "model": "pipeline.sequence.models",
    "sampler": "pipeline.sequence.sampling",
    "optimizer": "pipeline.sequence.optim",
    "schedule": "pipeline.sequence.optim",
    "probe": "pipeline.sequence.probe_methods",
}


@dataclass(frozen=True)
class Plugin:
    """One registered plug-in: its kind and name, its settings dataclass (None: it has no keys of its own), what
    builds it, a one-line description and any declarations its kind asks for (``attrs``)."""

    kind: str
    name: str
    settings: type | None
    target: Any
    help: str = ""
    attrs: dict = field(default_factory=dict)

    def load(self) -> Any:
        """The target itself: a ``"module:attribute"`` or module name is imported now."""
        if not isinstance(self.target, str):
            return self.target
        module, _, attribute = self.target.partition(":")
        loaded = importlib.import_module(module)
        return getattr(loaded, attribute) if attribute else loaded

    def build(self, *args, **kwargs) -> Any:
        """Call the target with ``args`` and ``kwargs``."""
        return self.load()(*args, **kwargs)

    def source(self) -> str:
        """Where the plug-in's code lives: its module, and the installed package that provides it."""
        module = self.target.partition(":")[0] if isinstance(self.target, str) else getattr(
            self.target, "__module__", None) or getattr(self.target, "__name__", "")
        from importlib.metadata import packages_distributions

        packages = sorted(set(packages_distributions().get(module.split(".")[0], [])))
        return f"{module} (package {', '.join(packages)})" if packages else module

    def values(self, section) -> dict:
        """The plug-in's keys with their values in ``section`` (a config section that includes them)."""
        return {f.name: getattr(section, f.name) for f in fields(self.settings)} if self.settings else {}


class Registry:
    """The plug-ins of one kind, by name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._plugins: dict[str, Plugin] = {}
        self._loaded = False

    def register(self, name: str, dataclass: type | None = None, build: Any = None, help: str = "",
                 **attrs) -> Callable | Plugin:
        """Register plug-in ``name``. With ``build`` given, now; without, as a decorator of the builder."""
        if build is None:
            def decorate(target):
                self.register(name, dataclass, target, help or _first_line(target.__doc__), **attrs)
                return target
            return decorate
        existing = self._plugins.get(name)
        if existing is not None and existing.target != build:
            log.warning("%s %r registered again (%s); the new one replaces %s", self.kind, name, build,
                        existing.target)
        plugin = Plugin(self.kind, name, dataclass, build, help, attrs)
        self._plugins[name] = plugin
        return plugin

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load()
        return sorted(self._plugins)

    def get(self, name: str, option: str | None = None) -> Plugin:
        """The plug-in ``name``: a registered one, or ``"module:attribute"`` (imported and registered under that
        name now); an unknown name is one line naming ``option`` (the config key) and the choices."""
        self._load()
        if name not in self._plugins and ":" in name:
            self._import(name, option or self.kind)
        if name not in self._plugins:
            raise ActrecError(f"{option or self.kind}: unknown {self.kind} {name!r}. Allowed: "
                              f"{', '.join(self.names())}, or module:attribute")
        return self._plugins[name]

    def _import(self, name: str, option: str) -> None:
        """Register ``"module:attribute"``: importing the module may register it; else the attribute is the
        builder and its ``Config`` dataclass (if any) its settings."""
        module, _, attribute = name.partition(":")
        try:
            target = getattr(importlib.import_module(module), attribute)
        except ImportError as exc:
            raise ActrecError(f"{option}={name}: cannot import {module} ({exc}); install the package that provides "
                              f"it, or put it on PYTHONPATH") from None
        except AttributeError:
            raise ActrecError(f"{option}={name}: {module} has no {attribute!r}") from None
        if name not in self._plugins:
            self.register(name, plugin_settings(target), target, _first_line(target.__doc__))

    def build(self, name: str, *args, **kwargs) -> Any:
        """Build plug-in ``name`` with ``args`` and ``kwargs``."""
        return self.get(name).build(*args, **kwargs)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(BUILTINS[self.kind])
        for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{info.name}")
        for entry in _entry_points(f"actrec.{self.kind}s"):
            try:
                target = entry.load()  # its module may register plug-ins itself
            except Exception as exc:  # a broken third-party plug-in must not take the built-ins down with it
                log.warning("%s plug-in %r (entry point %s) failed to load: %s", self.kind, entry.name,
                            entry.value, exc)
                continue
            if entry.name not in self._plugins:
                self.register(entry.name, plugin_settings(target), target, _first_line(target.__doc__))


def plugin_settings(target: Any) -> type | None:
    """The settings of a plug-in registered by its object alone: its ``Config`` dataclass, if it has one."""
    settings = getattr(target, "Config", None)
    return settings if settings is not None and is_dataclass(settings) else None


def _entry_points(group: str) -> list:
    from importlib.metadata import entry_points

    return list(entry_points(group=group))


def _first_line(doc: str | None) -> str:
    """A description's first sentence, without the ````name``: `` a module docstring starts with."""
    text = " ".join((doc or "").split())
    text = re.sub(r"^``[\w.-]+``: ", "", text)
    return re.split(r"(?<=[.;])\s", text, maxsplit=1)[0].rstrip(".;")


_REGISTRIES: dict[str, Registry] = {}


def describe(kinds: list[str] | None = None) -> str:
    """A table of the registered plug-ins of ``kinds`` (default: every kind): kind, name, its keys, what it is."""
    rows = [(kind, plugin.name, ", ".join(f.name for f in fields(plugin.settings)) if plugin.settings else "-",
             _first_line(plugin.help))
            for kind in kinds or BUILTINS for plugin in map(registry(kind).get, registry(kind).names())]
    header = ("kind", "name", "keys", "")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip()
                     for a, b, c, d in [header] + rows) + "\n"


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (one of ``BUILTINS``)."""
    if kind not in BUILTINS:
        raise ValueError(f"no plug-in kind {kind!r}; kinds: {', '.join(BUILTINS)}")
    return _REGISTRIES.setdefault(kind, Registry(kind))
