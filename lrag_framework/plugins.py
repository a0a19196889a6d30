"""The plugin manager: entry-point loading, validation, the component registry, ``lrag plugins``.

Every plugin, built-in or third-party, is a module named by an entry point in the
``lrag_framework`` group. Loading never stops at a bad plugin: an import error, a foreign
``LRAG_API_VERSION``, a hook that is not in ``hookspecs`` (a misspelt ``register_retriver``) or a
bad ``register`` call makes that plugin a ``BrokenPlugin`` and the others keep working.

Duplicate names: two plugins registering the same name are both kept. A bare name that a built-in
(distribution ``lrag-framework``) also registers resolves to the built-in, with a
``PluginWarning`` that the other is shadowed, so installing a package never changes what an
existing config runs; between third-party plugins the bare name is an error until a qualified
``distribution:name`` is used or one is disabled. Disabling takes plugin (entry-point) names,
distribution names or qualified component names (``distribution:name``).
"""
from __future__ import annotations

import difflib
import importlib
import json
import os
import re
import traceback
import warnings
import weakref
from dataclasses import asdict, dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Iterable

import pluggy
from pydantic import BaseModel

from . import hookspecs

GROUP = "lrag_framework"
DISABLE_ENV = "LRAG_DISABLE_PLUGINS"
BUILTIN = "lrag-framework"  # the distribution of the core and of its built-in plugins
HOOKS = {"backbone": "register_backbones", "retriever": "register_retrievers",
         "embedder": "register_embedders", "loss": "register_losses"}
_IMPORTLIB = os.path.dirname(importlib.__file__)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


class PluginError(Exception):
    """An unknown or ambiguous component name, a bad registration, or a bad component."""


class PluginWarning(UserWarning):
    """A component that runs, but not as its author or the user may expect: a third-party name
    shadowed by a built-in, a plugin written for a deprecated API version."""


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    params_model: type[BaseModel] | None
    plugin: str  # entry-point name
    distribution: str
    version: str
    api: int = hookspecs.API_VERSION  # the plugin's LRAG_API_VERSION

    @property
    def qualified(self) -> str:
        return f"{self.distribution}:{self.name}"

    @property
    def builtin(self) -> bool:
        return canonical(self.distribution) == BUILTIN

    def describe(self) -> str:
        return f"{self.qualified} (plugin {self.plugin!r}, {self.distribution} {self.version})"


@dataclass(frozen=True)
class DisabledPlugin:
    """A plugin blocked by the user (never imported)."""

    plugin: str
    distribution: str
    version: str


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that was not loaded, and why (the reason ends with a traceback summary)."""

    plugin: str
    distribution: str
    version: str
    reason: str


def canonical(dist: str) -> str:
    """PEP 503 normalised distribution name: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def disable_key(name: str) -> str:
    """How a ``disable_plugins`` entry compares: plugin and distribution names PEP 503
    normalised; in a qualified component name ``distribution:name`` only the distribution."""
    dist, sep, bare = name.strip().rpartition(":")
    return f"{canonical(dist)}:{bare}" if sep else canonical(bare)


_built: "weakref.WeakKeyDictionary[object, Entry]" = weakref.WeakKeyDictionary()


def describe_component(component: object, kind: str) -> str:
    """``retriever 'exact' (lrag-framework 0.1.0, plugin 'exact')`` for a component that
    ``Registry.build`` made; its class otherwise (a component constructed directly)."""
    try:
        entry = _built.get(component)
    except TypeError:  # not weak-referenceable or not hashable
        entry = None
    if entry is None:
        cls = type(component)
        return f"{kind} {cls.__module__}.{cls.__qualname__} (not built through the registry)"
    return (f"{kind} {entry.name!r} ({entry.distribution} {entry.version}, "
            f"plugin {entry.plugin!r})")


def _trace(exc: BaseException) -> str:
    """``Type: message``, then the last frames of the traceback outside importlib and us."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(("<frozen", _IMPORTLIB)) and f.filename != __file__][-3:]
    head = f"{type(exc).__name__}: {exc}"
    if not frames:
        return head
    return "\n".join([head, "Traceback (most recent call last):",
                      *"".join(traceback.format_list(frames)).rstrip().splitlines()])


class Registry:
    """Components by kind, as registered by the loaded plugins."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self._entries: list[Entry] = []
        self.broken: list[BrokenPlugin] = []
        self.disabled: list[str] = []  # entry-point names blocked by the user
        self.disabled_plugins: list[DisabledPlugin] = []
        self.disabled_components: list[Entry] = []  # disabled by qualified name

    @property
    def duplicates(self) -> dict[tuple[str, str], list[Entry]]:
        seen: dict[tuple[str, str], list[Entry]] = {}
        for e in self._entries:
            seen.setdefault((e.kind, e.name), []).append(e)
        return {key: found for key, found in seen.items() if len(found) > 1}

    def entries(self, kind: str) -> list[Entry]:
        _check_kind(kind)
        return sorted((e for e in self._entries if e.kind == kind),
                      key=lambda e: (e.name, e.distribution))

    def shadowed(self, kind: str, name: str) -> list[Entry]:
        """Third-party components that the built-in ``name`` shadows for a bare name."""
        found = self.duplicates.get((kind, name), [])
        return [e for e in found if not e.builtin] if any(e.builtin for e in found) else []

    def deprecated_api(self) -> list[str]:
        """Plugins (entry-point names) loaded under a deprecated API version."""
        return sorted({e.plugin for e in self._entries
                       if e.api in hookspecs.DEPRECATED_API_VERSIONS})

    def lookup(self, kind: str, name: str) -> Entry:
        """The entry for ``name`` or ``distribution:name``; PluginError if unknown or ambiguous."""
        entries = self.entries(kind)
        if not isinstance(name, str):
            raise PluginError(f"a {kind} name must be a string, got {name!r}")
        dist, sep, bare = name.rpartition(":")
        found = [e for e in entries if e.name == bare
                 and (not sep or canonical(e.distribution) == canonical(dist))]
        if len(found) == 1:
            return found[0]
        builtin = [e for e in found if e.builtin]
        if found and not sep and len(builtin) == 1:
            others = ", ".join(repr(e.qualified) for e in found if not e.builtin)
            warnings.warn(PluginWarning(
                f"{kind} {name!r} is the built-in {builtin[0].qualified}; it shadows {others} "
                f"of the same name: use the qualified name to pick that one"), stacklevel=2)
            return builtin[0]
        if found:
            raise PluginError(
                f"{kind} {name!r} is registered by several plugins: "
                + "; ".join(e.describe() for e in found)
                + f". Use a qualified name ({' or '.join(repr(e.qualified) for e in found)}) or "
                f"disable one plugin (config disable_plugins, or {DISABLE_ENV}).")
        names = sorted({e.qualified if (kind, e.name) in self.duplicates else e.name
                        for e in entries})
        off = [e for e in self.disabled_components if e.kind == kind and e.name == bare
               and (not sep or canonical(e.distribution) == canonical(dist))]
        off_plugins = [d for d in self.disabled_plugins if bare == d.plugin
                       or (sep and canonical(dist) == canonical(d.distribution))]
        if off or off_plugins:
            what = (f"component {off[0].qualified} is disabled" if off else
                    f"plugin {off_plugins[0].plugin!r} ({off_plugins[0].distribution} "
                    f"{off_plugins[0].version}) is disabled")
            raise PluginError(f"{kind} {name!r} is not available: {what} (config "
                              f"disable_plugins or {DISABLE_ENV}); available: "
                              f"{', '.join(names) or 'none'}")
        msg = f"unknown {kind} {name!r}; available: {', '.join(names) or 'none'}"
        close = difflib.get_close_matches(bare, [e.name for e in entries], n=1)
        if close:
            msg += f". Did you mean {close[0]!r}?"
        if self.broken:
            msg += (f" (plugins that failed to load: "
                    f"{', '.join(b.plugin for b in self.broken)}; see `lrag plugins`)")
        if self.disabled_plugins:
            msg += (f" (disabled plugins, whose components are not loaded: "
                    f"{', '.join(d.plugin for d in self.disabled_plugins)})")
        raise PluginError(msg)

    def params(self, kind: str, name: str, params: dict) -> BaseModel | None:
        """Validate ``params`` with the component's params model (pydantic errors propagate).

        A component registered without a params model takes no params: ``{}`` gives None.
        """
        entry = self.lookup(kind, name)
        if entry.params_model is None:
            if params:
                raise PluginError(f"{kind} {name!r} takes no params, got {sorted(params)}")
            return None
        if isinstance(params, entry.params_model):
            return params
        if isinstance(params, BaseModel):
            params = params.model_dump()
        return entry.params_model.model_validate(params)

    def build(self, kind: str, name: str, params: dict | BaseModel | None = None) -> Any:
        """Validate params, call the factory, check the component against its interface.

        The factory is called as ``factory(params)``, or ``factory()`` without a params model.
        """
        from .interfaces import INTERFACES

        entry = self.lookup(kind, name)
        validated = self.params(kind, name, {} if params is None else params)
        component = entry.factory() if entry.params_model is None else entry.factory(validated)
        expected = INTERFACES[kind]
        if not isinstance(component, expected):
            raise PluginError(
                f"{kind} {entry.describe()} built a {type(component).__qualname__}, which does "
                f"not implement {expected.__module__}.{expected.__qualname__}")
        if entry.api in hookspecs.DEPRECATED_API_VERSIONS:
            warnings.warn(PluginWarning(
                f"{kind} {entry.describe()} was written for plugin API {entry.api} "
                f"(deprecated; this lrag-framework speaks {hookspecs.API_VERSION}: see "
                f"lrag_framework.hookspecs)"), stacklevel=2)
        try:
            _built[component] = entry
        except TypeError:
            pass
        return component


def _check_kind(kind: str) -> None:
    if kind not in HOOKS:
        raise PluginError(f"unknown plugin kind {kind!r}; kinds: {', '.join(HOOKS)}")


@dataclass
class _Loading:
    """One plugin being loaded: its registrations are kept only if all of them are valid."""

    name: str
    distribution: str
    version: str
    api: int
    entries: list[Entry] = field(default_factory=list)

    def register_for(self, kind: str) -> Callable[..., None]:
        def register(name, factory, params_model=None):
            where = f"register({name!r}) in {HOOKS[kind]}"
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise PluginError(f"{where}: a name is letters, digits, '_', '.', '-' "
                                  f"(not starting with '_', '.', '-'), got {name!r}")
            if not callable(factory):
                raise PluginError(f"{where}: factory must be callable, got {factory!r}")
            if params_model is not None and not (isinstance(params_model, type)
                                                 and issubclass(params_model, BaseModel)):
                raise PluginError(f"{where}: params_model must be a pydantic BaseModel "
                                  f"subclass or None, got {params_model!r}")
            if any(e.kind == kind and e.name == name for e in self.entries):
                raise PluginError(f"{where}: {kind} {name!r} is registered twice")
            self.entries.append(Entry(kind, name, factory, params_model, self.name,
                                      self.distribution, self.version, self.api))
        return register


def _load_one(pm: pluggy.PluginManager, name: str, target: Any, dist: str,
              version: str) -> list[Entry] | str:
    """Load and register one plugin: its entries, or the reason it is broken."""
    if isinstance(target, EntryPoint):
        try:
            target = target.load()
        except Exception as exc:
            return f"failed to import {target.value}: {_trace(exc)}"
    api = getattr(target, "LRAG_API_VERSION", hookspecs.API_VERSION)
    if api not in hookspecs.SUPPORTED_API_VERSIONS:
        older = [v for v in hookspecs.SUPPORTED_API_VERSIONS if v != hookspecs.API_VERSION]
        also = f" (and {', '.join(map(str, older))})" if older else ""
        return f"declares API {api!r}, this lrag-framework speaks {hookspecs.API_VERSION}{also}"
    try:
        pm.register(target, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        return f"cannot be registered: {exc}"
    callers = pm.get_hookcallers(target) or []
    unknown = [c.name for c in callers if not c.has_spec() and not all(
        i.optionalhook for i in c.get_hookimpls() if i.plugin_name == name)]
    if unknown or not callers:
        pm.unregister(name=name)
        if not callers:
            return f"implements none of the hooks {', '.join(HOOKS.values())} (missing @hookimpl?)"
        hints = [f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(
            u, HOOKS.values(), n=1)) else repr(u) for u in unknown]
        return f"implements unknown hooks {', '.join(hints)}; hooks: {', '.join(HOOKS.values())}"
    loading = _Loading(name, dist, version, api)
    for kind, hook in HOOKS.items():
        for impl in getattr(pm.hook, hook).get_hookimpls():
            if impl.plugin_name != name:
                continue
            register = loading.register_for(kind)
            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except Exception as exc:
                pm.unregister(name=name)
                return f"{hook} failed: {_trace(exc)}"
    return loading.entries


def build_registry(plugins: Iterable[tuple[str, Any, str, str]],
                   disabled: Iterable[str] = ()) -> Registry:
    """A Registry from ``(plugin_name, target, distribution, version)`` tuples.

    ``target`` is an ``importlib.metadata.EntryPoint`` (loaded here, import errors reported) or
    an already imported module / object holding hookimpls (how tests add fake plugins).
    ``disabled`` holds plugin (entry-point) names or distribution names, blocked in the plugin
    manager and never imported, and qualified component names ``distribution:name``, whose
    plugin loads without that component (of any kind).
    """
    keys = {disable_key(d) for d in disabled}
    blocked = {d for d in keys if ":" not in d}
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry(pm)
    for name, target, dist, version in plugins:
        if canonical(name) in blocked or canonical(dist) in blocked:
            pm.set_blocked(name)
            registry.disabled.append(name)
            registry.disabled_plugins.append(DisabledPlugin(name, dist, version))
            continue
        result = _load_one(pm, name, target, dist, version)
        if isinstance(result, str):
            registry.broken.append(BrokenPlugin(name, dist, version, result))
            continue
        for entry in result:
            off = f"{canonical(entry.distribution)}:{entry.name}" in keys
            (registry.disabled_components if off else registry._entries).append(entry)
    return registry


def _entry_point_plugins() -> list[tuple[str, EntryPoint, str, str]]:
    found = [(ep.name, ep, ep.dist.name if ep.dist else "<unknown>",
              ep.dist.version if ep.dist else "") for ep in entry_points(group=GROUP)]
    return sorted(found, key=lambda p: (canonical(p[2]), p[0]))


_cache: dict[frozenset[str], Registry] = {}


def load_plugins(disabled: Iterable[str] = ()) -> Registry:
    """The registry of every installed plugin, minus ``disabled`` and ``$LRAG_DISABLE_PLUGINS``
    (comma-separated plugin, distribution or ``distribution:component`` names). Cached:
    repeated calls are free."""
    env = [d.strip() for d in os.environ.get(DISABLE_ENV, "").split(",") if d.strip()]
    key = frozenset(disable_key(d) for d in (*disabled, *env) if d.strip())
    if key not in _cache:
        _cache[key] = build_registry(_entry_point_plugins(), key)
    return _cache[key]


def clear_plugin_cache() -> None:
    """Forget loaded registries (after installing plugins in a running process; tests)."""
    _cache.clear()


def _mark(registry: Registry, entry: Entry, dups: dict) -> str:
    if (entry.kind, entry.name) not in dups:
        return ""
    if registry.shadowed(entry.kind, entry.name):
        return "" if entry.builtin else " (shadowed)"
    return " (duplicate)"


def plugins_report(as_json: bool = False, kind: str | None = None) -> str:
    """What ``lrag plugins`` prints: components by kind, duplicates (and which built-in shadows
    which), broken, disabled and deprecated plugins."""
    registry = load_plugins()
    kinds = list(HOOKS) if kind is None else [kind]
    for k in kinds:
        _check_kind(k)
    dups = {key: found for key, found in registry.duplicates.items() if key[0] in kinds}
    off = [e for e in registry.disabled_components if e.kind in kinds]
    if as_json:
        return json.dumps({
            "components": [{"kind": k, "name": e.name, "qualified_name": e.qualified,
                            "distribution": e.distribution, "version": e.version,
                            "plugin": e.plugin, "api": e.api}
                           for k in kinds for e in registry.entries(k)],
            "broken": [asdict(b) for b in registry.broken],
            "duplicates": [{"kind": k, "name": n, "qualified_names": [e.qualified for e in found],
                            "shadowed": [e.qualified for e in registry.shadowed(k, n)]}
                           for (k, n), found in dups.items()],
            "disabled": registry.disabled,
            "disabled_components": [{"kind": e.kind, "qualified_name": e.qualified} for e in off],
            "deprecated_api": registry.deprecated_api(),
        }, indent=2)
    header = ("name", "distribution", "version", "plugin")
    lines = []
    for k in kinds:
        rows = [(e.name + _mark(registry, e, dups), e.distribution, e.version, e.plugin)
                for e in registry.entries(k)]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        title = HOOKS[k].removeprefix("register_")
        lines += [f"{title}:" if rows else f"{title}: none",
                  *("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                    for r in ([header, *rows] if rows else [])), ""]
    for (k, n), found in dups.items():
        shadowed = registry.shadowed(k, n)
        if shadowed:
            lines.append(f"warning: {k} {n!r} is the built-in lrag-framework:{n}; it shadows "
                         f"{', '.join(e.qualified for e in shadowed)} (use the qualified name "
                         f"to pick it)")
        else:
            lines.append(f"duplicate {k} {n!r}: use one of "
                         f"{', '.join(e.qualified for e in found)}, or disable a plugin")
    for plugin in registry.deprecated_api():
        lines.append(f"warning: plugin {plugin!r} is written for a deprecated plugin API "
                     f"(this lrag-framework speaks {hookspecs.API_VERSION})")
    if registry.disabled:
        lines.append(f"disabled plugins: {', '.join(registry.disabled)}")
    if off:
        lines.append(f"disabled components: {', '.join(f'{e.kind} {e.qualified}' for e in off)}")
    lines.append(f"broken plugins: {len(registry.broken) or 'none'}")
    for b in registry.broken:
        lines.append(f"  {b.plugin} ({b.distribution} {b.version}):")
        lines += ["    " + line for line in b.reason.splitlines()]
    return "\n".join(lines).rstrip()
