"""One configuration system for every entry point.

The defaults live in ``lesionspark/conf/default.yaml``. A user's YAML file (``--conf``) is merged
over them, then ``key.path=value`` overrides from the command line. The CLI, the spark-submit jobs
and the library functions all take the resulting :class:`Config`, so a key means the same thing
everywhere.

Runs on the driver; executors and ranks get plain values taken from it, never the Config.
"""
from __future__ import annotations

import copy
from importlib import resources
from typing import Any, Iterable, Mapping

import yaml


class ConfigError(ValueError):
    pass


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (['a','b','c'], value parsed as YAML: numbers, bools, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


class Config:
    """Nested configuration with dotted access: ``cfg.get('ingest.split.seed')``."""

    def __init__(self, data: Mapping):
        self._data = copy.deepcopy(dict(data))

    @classmethod
    def load(cls, path: str | None = None, overrides: Iterable[str] = (),
             extra: Mapping | None = None) -> "Config":
        defaults = yaml.safe_load(resources.files("lesionspark").joinpath("conf/default.yaml").read_text())
        data = defaults
        if path:
            with open(path) as fh:
                user = yaml.safe_load(fh) or {}
            if not isinstance(user, Mapping):
                raise ConfigError(f"{path}: the top level must be a mapping")
            data = _merge(data, user)
        if extra:
            data = _merge(data, extra)
        cfg = cls(data)
        for item in overrides:
            keys, value = parse_override(item)
            cfg.set(".".join(keys), value)
        return cfg

    def get(self, key: str, default: Any = ...) -> Any:
        node: Any = self._data
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                if default is ...:
                    raise ConfigError(f"missing configuration key {key!r}")
                return default
            node = node[part]
        return copy.deepcopy(node)

    def set(self, key: str, value: Any) -> "Config":
        parts = key.split(".")
        node = self._data
        for part in parts[:-1]:
            if part not in node:
                node[part] = {}
            elif not isinstance(node[part], dict):
                raise ConfigError(f"cannot set {key!r}: {part!r} is not a section")
            node = node[part]
        last = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(last), dict):
            value = _merge(node[last], value)  # a section is merged into, as --conf files are
        node[last] = value
        return self

    def with_overrides(self, values: Mapping[str, Any]) -> "Config":
        """A copy with ``{dotted.key: value}`` applied; ``None`` values are skipped."""
        out = Config(self._data)
        for key, value in values.items():
            if value is not None:
                out.set(key, value)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self._data, sort_keys=False)
