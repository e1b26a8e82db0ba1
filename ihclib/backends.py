"""Inference runtimes for tiled denoising: Keras/TensorFlow (always) and OpenVINO (optional).

TensorFlow's CPU wheel runs convolutions through Eigen kernels unless its oneDNN kernels are on
(``TF_ENABLE_ONEDNN_OPTS=1``, which ``import ihclib`` sets by default because TensorFlow turns
them on by itself only on some CPUs). OpenVINO (``pip install 'ihclib[openvino]'``) picks its
kernels at run time for the CPU it finds, folds batch normalisation into the convolutions and
converts the model's traced ``tf.function`` directly. ``make bench`` measures the backends that
are installed (``reports/benchmarks.json``). An ONNX Runtime backend was removed: no benchmark
showed a case where it was faster than the Keras path with oneDNN (issue 12).

A backend is chosen by name: ``"keras"``, ``"openvino"`` or ``"auto"`` (Keras when oneDNN is
on, else OpenVINO if installed). ``None`` means the ``IHCLIB_BACKEND`` environment variable,
else ``"keras"``. Every backend gets the same fixed input shape ``(batch_size, tile_size,
tile_size, 3)`` and is converted once per model and shape (cached on the model object).
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any, Callable

import numpy as np

Predictor = Callable[[np.ndarray], np.ndarray]

BACKENDS = ("keras", "openvino")
# preferred first when TensorFlow runs without oneDNN (make bench compares them)
AUTO_ORDER = ("openvino", "keras")
ENV_VAR = "IHCLIB_BACKEND"
_REQUIRES = {"keras": ("keras",), "openvino": ("openvino",)}
_EXTRA = {"openvino": "openvino"}
_CACHE_ATTR = "_ihclib_predictors"  # one cache per model object, for every backend


def cpu_threads() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def is_available(name: str) -> bool:
    """Whether the packages a backend needs are installed (nothing is imported)."""
    return all(importlib.util.find_spec(pkg) is not None for pkg in _REQUIRES[name])


def available_backends() -> list[str]:
    """Installed backends in :data:`AUTO_ORDER`."""
    return [name for name in AUTO_ORDER if is_available(name)]


def onednn_requested() -> bool:
    """Whether TensorFlow was asked for its oneDNN kernels (``TF_ENABLE_ONEDNN_OPTS``, read at
    TensorFlow's import; ``import ihclib`` sets it to 1 unless the user set it)."""
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in ("1", "true")


def resolve_backend(name: str | None = None) -> str:
    """A concrete backend name for ``name`` (None: $IHCLIB_BACKEND, else "keras"; "auto": Keras
    if oneDNN is on, else the first installed of AUTO_ORDER). ValueError naming the choices, or
    the extra to install."""
    if name is None:
        name = os.environ.get(ENV_VAR) or "keras"
    name = name.strip().lower()
    if name == "auto":
        return "keras" if onednn_requested() else available_backends()[0]
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
    if not is_available(name):
        raise ValueError(f"backend {name!r} is not installed; pip install 'ihclib[{_EXTRA[name]}]'")
    return name


def traced_function(model: Any, tile_size: int, batch_size: int, jit_compile: bool = False):
    """The model's inference pass as a ``tf.function`` with one fixed input signature."""
    import tensorflow as tf

    spec = tf.TensorSpec((batch_size, tile_size, tile_size, 3), tf.float32, name="tiles")
    return tf.function(lambda x: model(x, training=False), input_signature=[spec], jit_compile=jit_compile)


def openvino_predictor(model: Any, tile_size: int, batch_size: int, threads: int | None = None,
                       streams: int = 1) -> Predictor:
    """numpy batch -> numpy prediction through OpenVINO (CPU plugin, float32 inference).

    ``streams`` 1: one request on all ``threads`` (latency mode). More: the batch is split into
    ``streams`` parts run at once, each on ``threads / streams`` cores (throughput mode; the
    parts are padded to equal size). Precision is pinned to f32, so results match Keras also on
    CPUs where OpenVINO would otherwise infer in bf16.
    """
    import openvino as ov

    threads = threads or cpu_threads()
    streams = max(1, min(streams, batch_size, threads))
    part = math.ceil(batch_size / streams)
    converted = ov.convert_model(traced_function(model, tile_size, part).get_concrete_function())
    config = {"NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(converted, "CPU", config)
    if streams == 1:
        request = compiled.create_infer_request()

        def predict(batch: np.ndarray) -> np.ndarray:
            request.infer({0: np.ascontiguousarray(batch, np.float32)})
            return request.get_output_tensor(0).data.copy()  # the request reuses its output buffer
    else:
        queue = ov.AsyncInferQueue(compiled, streams)
        padded = np.zeros((part * streams, tile_size, tile_size, 3), np.float32)
        out = np.empty_like(padded)

        def collect(request, i):
            out[i * part : (i + 1) * part] = request.get_output_tensor(0).data

        queue.set_callback(collect)

        def predict(batch: np.ndarray) -> np.ndarray:
            padded[: len(batch)] = batch
            for i in range(streams):
                queue.start_async({0: padded[i * part : (i + 1) * part]}, i)
            queue.wait_all()
            return out[: len(batch)].copy()

    predict.compiled = compiled  # type: ignore[attr-defined]
    return predict


def keras_predictor(model: Any, tile_size: int, batch_size: int, jit_compile: bool = False) -> Predictor:
    """numpy batch -> numpy prediction through the traced ``tf.function`` (no conversion)."""
    function = traced_function(model, tile_size, batch_size, jit_compile)

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(function(batch))

    predict.function = function  # type: ignore[attr-defined]
    return predict


_BUILDERS = {"keras": keras_predictor, "openvino": openvino_predictor}


def predictor(model: Any, tile_size: int, batch_size: int, backend: str | None = None,
              jit_compile: bool = False) -> Predictor:
    """A cached predictor for a Keras model on ``backend`` (resolved with :func:`resolve_backend`).

    ``jit_compile`` (XLA) applies to the Keras backend only. The Keras predictor reads the
    model's weights at every call; a converted one (OpenVINO) holds a copy of them, so it is
    converted again once they have changed (:func:`cached_for_weights`).
    """
    name = resolve_backend(backend)
    if name == "keras":
        cache = _model_cache(model)
        key = (tile_size, batch_size, jit_compile)
        if key not in cache:
            cache[key] = keras_predictor(model, tile_size, batch_size, jit_compile)
        return cache[key]
    return cached_for_weights(model, (name, tile_size, batch_size),
                              lambda: _BUILDERS[name](model, tile_size, batch_size))


def weights_fingerprint(model: Any) -> tuple:
    """Every weight's shape and CRC-32 of its bytes: whether ``model``'s weights changed (a
    training step, ``set_weights``) since something was made from them. About 1 ms for the
    bundled model's 0.5 MB, 30 ms for the paper network's 71 MB."""
    import zlib

    return tuple((w.shape, zlib.crc32(np.ascontiguousarray(w))) for w in model.get_weights())


def cached_for_weights(model: Any, key: Any, make: Callable[[], Any]) -> Any:
    """``make()``, cached on ``model`` under ``key`` for as long as the model's weights are the
    ones it was made from (:func:`weights_fingerprint`): for what holds a copy of them (an
    inference copy, a converted model), which would otherwise go on giving the old model's
    output after the model was trained further or given other weights."""
    cache = _model_cache(model)
    fingerprint = weights_fingerprint(model)
    made = cache.get(("weights of", key))
    if key not in cache or made != fingerprint:
        cache[key] = make()
        cache[("weights of", key)] = fingerprint
    return cache[key]


def _model_cache(model: Any) -> dict:
    """The dict of converted forms kept on a model object (created on first use)."""
    cache = getattr(model, _CACHE_ATTR, None)
    if cache is None:
        cache = {}
        # object.__setattr__: keep it out of Keras' attribute tracking (and out of saved files)
        object.__setattr__(model, _CACHE_ATTR, cache)
    return cache
