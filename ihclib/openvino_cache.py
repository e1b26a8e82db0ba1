"""OpenVINO's converted models kept on disk between runs of ``ihclib``.

Converting a Keras model for OpenVINO goes through TensorFlow's graph: 0.64-0.75 s for the
paper's network (17.7 M weights) on the Zen 5 of README "Performance", against 0.01 s to read
the converted model back and 0.07 s to compile it. That conversion would be paid by every run
of ``ihclib denoise``, and it is more than the command gains from OpenVINO on one 4096 px image.
So the converted model (OpenVINO IR, float32 weights, any batch and tile size: each use
reshapes a copy) is kept under a key of everything it depends on (:func:`model_key`): the
architecture, every weight, the source of ihclib's own layers and the versions of OpenVINO,
TensorFlow and Keras. A retrained model is a new key; it never gets an old model's output.

Each entry is written into a temporary folder and renamed into place, so an entry that exists
is complete, also with processes starting together (a job array, Dask workers). The
:data:`MAX_ENTRIES` most recently used entries are kept (the paper's network takes 68 MB).
Where: ``$IHCLIB_OPENVINO_CACHE`` (``0`` or ``off``: no cache), else
``<the user's cache>/ihclib/openvino``. Any problem with the folder or an entry (read-only,
full disk, a damaged file) means converting as without the cache: it is never worth an error.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from .xla_cache import user_cache_folder

ENV_VAR = "IHCLIB_OPENVINO_CACHE"
MAX_ENTRIES = 4
MODEL_FILE = "model.xml"  # beside it: model.bin, the weights
STALE_WORK_S = 24 * 3600  # a temporary folder this old: its writer is gone


def cache_root() -> Path | None:
    """The cache folder (None: turned off by ``$IHCLIB_OPENVINO_CACHE``)."""
    return user_cache_folder(ENV_VAR, "openvino")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def _all_layers(model: Any) -> list:
    """``model``'s layers, those of nested models included."""
    found, todo = [], list(getattr(model, "layers", []))
    while todo:
        layer = todo.pop()
        found.append(layer)
        todo.extend(getattr(layer, "layers", []))
    return found


def model_key(model: Any, fingerprint: tuple) -> str:
    """A name for what converting ``model`` gives: its configuration, its weights
    (``fingerprint``: :func:`ihclib.backends.weights_fingerprint`), the source files of its
    layers that are not Keras' own (what they compute is in the code, not in the configuration)
    and the versions of the converting packages."""
    parts = [f"openvino {_version('openvino')}", f"tensorflow {_version('tensorflow')}",
             f"keras {_version('keras')}", model.to_json(), repr(fingerprint)]
    for cls in sorted({type(layer) for layer in _all_layers(model)}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        if cls.__module__.split(".")[0] != "keras":
            source = Path(inspect.getsourcefile(cls) or "")
            parts.append(f"{cls.__module__}.{cls.__qualname__} {hashlib.sha256(source.read_bytes()).hexdigest()}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def converted(model: Any, fingerprint: tuple, convert: Callable[[], Any]) -> Any:
    """The ``openvino.Model`` of ``model``: read from the cache, else ``convert()`` and kept."""
    import openvino as ov

    root = cache_root()
    if root is None:
        return convert()
    try:
        entry = root / model_key(model, fingerprint)
    except (OSError, TypeError, ValueError):  # a layer whose source cannot be read: not cached
        return convert()
    if (entry / MODEL_FILE).is_file():
        try:
            found = ov.Core().read_model(entry / MODEL_FILE)
            os.utime(entry)  # recently used: kept longest
            return found
        except Exception:  # damaged on disk (OpenVINO raises RuntimeError and others): make it again
            shutil.rmtree(entry, ignore_errors=True)
    made = convert()
    _store(made, root, entry)
    return made


def _store(made: Any, root: Path, entry: Path) -> None:
    """Write ``made`` under ``entry`` (complete before it appears), then drop the least recently
    used entries beyond :data:`MAX_ENTRIES`."""
    import openvino as ov

    work = root / "work"
    tmp = None
    try:
        work.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=work))
        ov.save_model(made, tmp / MODEL_FILE, compress_to_fp16=False)
        try:
            os.replace(tmp, entry)
        except OSError:  # another process stored the same entry first
            pass
        _prune(root, work)
    except Exception:  # a cache that cannot be written is only slower next time
        pass
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _prune(root: Path, work: Path) -> None:
    now = time.time()
    for folder in work.iterdir():
        if now - folder.stat().st_mtime > STALE_WORK_S:
            shutil.rmtree(folder, ignore_errors=True)
    entries = sorted((p for p in root.iterdir() if p.is_dir() and p != work), key=lambda p: p.stat().st_mtime,
                     reverse=True)
    for old in entries[MAX_ENTRIES:]:
        shutil.rmtree(old, ignore_errors=True)
