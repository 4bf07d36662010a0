"""The model registry under a storage root (driver side): ``models/<name>/<version>/`` holds
``model.keras`` and ``model_card.json``; ``models/<name>/latest`` names the newest version.

Shared by evaluate, explain and score: one place resolves ``name[:version|latest]`` and refuses a
card that lacks what scoring needs.
"""
from __future__ import annotations

import json
import re

from . import storage
from .layout import Layout

from . import publishing
from ..core.config import ConfigError
from .modelfile import ModelFileRefused, check_file

CARD_KEYS = ("name", "version", "architecture", "classes", "image_size", "resize", "preprocessing")
MAX_CARD_BYTES = 16 << 20  # a card is a few KB; a model folder may be anywhere (a URI a user gives)
MAX_LATEST_BYTES = 4096  # ``latest`` holds one version name
PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ModelError(ConfigError):
    """The model cannot be used (missing, unreadable or incomplete card): exit code 2."""


def resolve_model(root: str, spec: str) -> tuple[dict, str]:
    """``name[:version|latest]`` in the root's registry, or the URI of a model version's folder (a
    model published under another root: scoring an S3 root with a model trained on HDFS) ->
    (model card, model file URI). Refuses an unreadable or incomplete card."""
    if "://" in spec or spec.startswith(("/", ".", "~")):
        model_dir = storage.normalize_uri(spec).rstrip("/")
        label = model_dir
        name, version = model_dir.rsplit("/", 2)[-2:]  # .../<name>/<version>: what its card must say
    else:
        name, _, version = spec.partition(":")
        for part in (name,) + ((version,) if version and version != "latest" else ()):
            plain(part, f"model {spec!r}")
        base = Layout(root).models(name)
        if not version or version == "latest":
            if not storage.exists(base + "/latest"):
                raise ModelError(f"no model {name!r} under {base} (train one, or check --root)")
            try:  # a regular file naming one folder of the registry, nothing else
                version = storage.read_regular(base + "/latest", MAX_LATEST_BYTES).decode().strip()
            except (OSError, ValueError) as exc:
                raise ModelError(f"cannot read {base}/latest ({exc})") from None
            plain(version, f"{base}/latest names")
        model_dir, label = f"{base}/{version}", f"{name}:{version}"
    model_dir = publishing.resolve(model_dir)  # on object stores: the version folder the publish record names
    try:  # a regular file only: a FIFO or a device under the card's name must not hang the run
        card = json.loads(storage.read_regular(model_dir + "/model_card.json", MAX_CARD_BYTES))
    except Exception as exc:
        raise ModelError(f"cannot read the model card of {label} ({exc}); refusing to use it") from None
    missing = [k for k in CARD_KEYS if not isinstance(card, dict) or k not in card]
    if missing:
        raise ModelError(f"the model card of {label} lacks {missing}; refusing to use it")
    for key, folder in (("name", name), ("version", version)):
        # the card's name and version build paths (overlays, reports) and key the done check
        plain(card[key], f"the model card of {label}: {key}")
        if card[key] != folder:
            raise ModelError(f"the model card of {label} says {key} {str(card[key])[:80]!r}, but its folder is "
                             f"{folder!r}; refusing to use it")
    try:  # read by every scoring worker: a FIFO there would hang them all
        kind = storage.file_type(model_dir + "/model.keras")
    except OSError as exc:
        kind = f"unreadable ({exc})"
    if kind != "file":
        raise ModelError(f"{model_dir}/model.keras is {'missing' if kind == 'notfound' else kind}, not a model file")
    fs, path = storage.filesystem(model_dir + "/model.keras")
    try:
        with fs.open_input_file(path) as fh:  # the config only: the zip's directory, then one member
            check_file(fh)
    except (ModelFileRefused, OSError) as exc:
        raise ModelError(f"{label}: {exc}") from None
    return card, model_dir + "/model.keras"


def plain(value, what: str) -> str:
    """``value`` if it is a plain name (letters, digits, ``.``, ``_``, ``-``; not ``.`` or ``..``),
    else ``ModelError``: a model's name and version become folder names under the root."""
    if not isinstance(value, str) or not PLAIN.fullmatch(value) or value in (".", ".."):
        raise ModelError(f"{what} {str(value)[:80]!r} is not a plain name (letters, digits, '.', '_', '-')")
    return value


def explanations_dir(root: str, card: dict) -> str:
    """``explanations/<model>/<version>``: explain's overlays and table, and score's flagged overlays."""
    return Layout(root).explanations(card["name"], card["version"])
