"""One configuration system for every entry point.

The defaults live in ``lesionspark/conf/default.yaml``. A user's YAML file (``--conf``) is merged
over them, then ``key.path=value`` overrides from the command line. The CLI, the spark-submit jobs
and the library functions all take the resulting :class:`Config`, so a key means the same thing
everywhere.

Runs on the driver; executors and ranks get plain values taken from it, never the Config.
"""
from __future__ import annotations

import copy
import logging
from importlib import resources
from typing import Any, Iterable, Mapping

import yaml


log = logging.getLogger(__name__)


class ConfigError(ValueError):
    pass


# Keys that moved into a section that several stages share: the old name is still read, with a
# warning, until release 0.2.
RENAMED = {
    "score.batch_size": "inference.batch_size", "score.arrow_batch_rows": "inference.arrow_batch_rows",
    "score.threads": "inference.threads", "explain.method": "inference.heatmap",
    "ingest.max_image_pixels": "limits.max_image_pixels", "ingest.max_decoded_bytes": "limits.max_decoded_bytes",
    "score.path_regex": "archive.path_regex", "score.follow_links": "archive.follow_links",
    "score.max_file_bytes": "archive.max_file_bytes", "score.read_timeout_s": "archive.read_timeout_s",
    "score.metadata_csv": "archive.metadata_csv",
}

# The type of each key whose default is null (the other keys take their default's type).
NULLABLE = {
    "ingest.metadata": str, "ingest.hmnist": str, "ingest.image_glob": str, "balance.neighbor_size": int,
    "model.name": str, "model.weights": str, "train.balance": str, "train.num_proc": int,
    "train.samples_per_epoch": int, "train.run_id": str, "archive.metadata_csv": str, "score.archive": str,
    "score.path_salt": str, "explain.images": str, "evaluate.dataset": str, "archive.path_regex": str,
}


def _warn_renamed(old: str, where: str) -> str:
    new = RENAMED[old]
    log.warning("%sconfiguration key %r is now %r: the old name is accepted until release 0.2", where, old, new)
    return new


def renamed(data: Mapping, where: str = "") -> dict:
    """``data`` (a nested mapping) with every old key (``RENAMED``) moved to its new place, a warning
    each; where both are given, the new name wins."""
    out = copy.deepcopy(dict(data))
    for old in RENAMED:
        section, key = old.split(".")
        if isinstance(out.get(section), Mapping) and key in out[section]:
            value = out[section].pop(key)
            new_section, new_key = _warn_renamed(old, where).split(".")
            target = out.setdefault(new_section, {})
            if isinstance(target, Mapping):
                target.setdefault(new_key, value)
    return out


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Sections whose keys are the user's own (Spark's settings, an architecture's parameters, per-class
# counts, HiveServer2's settings): any key is accepted there.
FREE_FORM = ("spark.conf", "model.params", "balance.counts", "serve.hive")


def _kind(value) -> str:
    return "a mapping" if isinstance(value, Mapping) else "a list" if isinstance(value, list) else \
        "true or false" if isinstance(value, bool) else "a number" if isinstance(value, (int, float)) else \
        "a string" if isinstance(value, str) else type(value).__name__


def _fits(value, default, path: str = "") -> bool:
    """Whether ``value`` may replace ``default`` (null fits every key; a key whose default is null
    takes its type from ``NULLABLE``)."""
    if value is None:
        return True
    if default is None:
        kind = NULLABLE.get(path)
        return kind is None or (isinstance(value, (int, float)) and not isinstance(value, bool) if kind is int
                                else isinstance(value, kind))
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):  # a whole-number default takes 10.0 too (the code converts)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, (list, str))  # one URI where a list of them is expected
    if isinstance(default, Mapping):
        return isinstance(value, Mapping)
    return isinstance(value, str)


def check_keys(over: Mapping, defaults: Mapping, prefix: str = "") -> None:
    """``ConfigError`` for a key the defaults do not have (naming the nearest one that exists) or a
    value of the wrong type, anywhere in ``over``: a typo (``score.treads=4``) is refused at start,
    never silently ignored."""
    import difflib
    for key, value in over.items():
        path = f"{prefix}{key}"
        if key not in defaults:
            moved = {o.split(".", 1)[1]: n for o, n in RENAMED.items() if o.startswith(prefix) and o.count(".") == 1}
            near = difflib.get_close_matches(str(key), [str(k) for k in defaults] + list(moved), n=1, cutoff=0.6)
            hint = f"; did you mean '{moved.get(near[0]) or prefix + near[0]}'?" if near else \
                f"; {prefix.rstrip('.') or 'the top level'} has {', '.join(map(str, defaults))}"
            raise ConfigError(f"unknown configuration key {path!r}{hint}")
        default = defaults[key]
        if not _fits(value, default, path):
            kind = "a string" if NULLABLE.get(path) is str else "a number" if path in NULLABLE else _kind(default)
            raise ConfigError(f"configuration key {path!r} must be {kind} or null, not {value!r}"
                              if default is None else f"configuration key {path!r} must be {kind}, not {value!r}")
        if isinstance(default, Mapping) and isinstance(value, Mapping) and path not in FREE_FORM:
            check_keys(value, default, path + ".")


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
            user = renamed(user, f"{path}: ")
            try:
                check_keys(user, defaults)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            data = _merge(data, user)
        if extra:
            data = _merge(data, renamed(extra))
        cfg = cls(data)
        for item in overrides:
            keys, value = parse_override(item)
            if ".".join(keys) in RENAMED:
                keys = _warn_renamed(".".join(keys), "").split(".")
            nested: Any = value
            for part in reversed(keys):
                nested = {part: nested}
            check_keys(nested, defaults)
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
                out.set(_warn_renamed(key, "") if key in RENAMED else key, value)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self._data, sort_keys=False)
