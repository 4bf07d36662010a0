"""A ``.keras`` model file checked before Keras deserialises it (driver and executors).

Keras 2.15 builds a model from the ``config.json`` inside the file: every entry names a ``module``
and a ``class_name``; for the top-level entry Keras imports that module, whatever it is, and calls
the class's ``from_config`` (nested entries are looked up among its built-ins today).
``safe_mode`` refuses only ``Lambda`` code; any other importable class would run (Keras 3.9 added
an allow-list for this, CVE-2025-1550; 2.15 has none). So the config is read here first, bounded,
and every class it names must be one the project's own builders use (``ALLOWED``:
``models.build`` for every architecture, with and without metadata inputs; a test keeps the two in
step). Anything else is a ``ModelFileRefused`` naming the class, before Keras sees the file.
``compile_config`` is not checked: models are loaded with ``compile=False``, which never reads it.
Runs on the driver (``registry.resolve_model``) and in executors (``inference.predictor.load_model``).
"""
from __future__ import annotations

import json
import zipfile

MAX_CONFIG_BYTES = 16 << 20
LAYERS = ("Activation", "Add", "BatchNormalization", "Concatenate", "Conv2D", "Dense", "DepthwiseConv2D", "Dropout",
          "Flatten", "GlobalAveragePooling2D", "InputLayer", "MaxPooling2D", "Multiply", "Normalization", "Rescaling",
          "Reshape", "ZeroPadding2D")
INITIALIZERS = ("GlorotUniform", "Ones", "VarianceScaling", "Zeros")
ALLOWED = frozenset({("keras.layers", c) for c in LAYERS} | {("keras.initializers", c) for c in INITIALIZERS}
                    | {("keras.src.engine.functional", "Functional")})
SKIPPED = ("compile_config",)


class ModelFileRefused(ValueError):
    """The model file names a class outside the allow-list, or is no readable model file."""


def named_classes(config) -> list[tuple]:
    """(module, class_name, registered_name) of every object a Keras config names."""
    out, stack = [], [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "class_name" in node or "module" in node:
                out.append((node.get("module"), node.get("class_name"), node.get("registered_name")))
            stack += [v for k, v in node.items() if k not in SKIPPED]
        elif isinstance(node, list):
            stack += node
    return out


def check_config(config) -> None:
    """``ModelFileRefused`` unless every class the config names is allowed."""
    for module, name, registered in named_classes(config):
        if (module, name) not in ALLOWED or registered not in (None, name):
            raise ModelFileRefused(f"the model's config names {module}.{name}"
                                   + (f" (registered as {registered})" if registered not in (None, name) else "")
                                   + ", which is not a layer lesionspark builds; refusing to load it")


def check_file(fh) -> None:
    """Check the ``config.json`` of an open, seekable ``.keras`` file."""
    try:
        with zipfile.ZipFile(fh) as archive:
            info = archive.getinfo("config.json")
            if info.file_size > MAX_CONFIG_BYTES:
                raise ModelFileRefused(f"the model's config.json is {info.file_size} bytes (at most {MAX_CONFIG_BYTES})")
            with archive.open(info) as member:
                config = json.loads(member.read(MAX_CONFIG_BYTES + 1))
    except ModelFileRefused:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ModelFileRefused(f"not a .keras model file ({type(exc).__name__}: {str(exc)[:200]})") from None
    check_config(config)
