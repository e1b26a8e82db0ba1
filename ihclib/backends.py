"""Inference runtimes for tiled denoising: Keras/TensorFlow and OpenVINO (both dependencies).

TensorFlow's CPU wheel runs convolutions through Eigen kernels unless its oneDNN kernels are on
(``TF_ENABLE_ONEDNN_OPTS=1``, which ``import ihclib`` sets by default because TensorFlow turns
them on by itself only on some CPUs). OpenVINO (a dependency; an install without it falls back to
Keras) picks its kernels at run time for the CPU it finds, folds batch normalisation into the
convolutions and converts the model's traced ``tf.function`` directly. ``make bench`` measures the backends that
are installed (``reports/benchmarks.json``). An ONNX Runtime backend was removed: no benchmark
showed a case where it was faster than the Keras path with oneDNN (issue 12).

A backend is chosen by name: ``"keras"``, ``"openvino"`` or ``"auto"``, what ``ihclib denoise``
uses: Keras for a model with fused classical layers (the bundled ``crosschannel_unet``: only
Keras runs their fused and compiled form, and OpenVINO ran the model 3x slower) and wherever
TensorFlow sees a GPU, OpenVINO for any other model where it is installed (the paper's network at batch 8: 395-400 against 359-372
GFLOP/s, at batch 1 385 against 268-279, on the Zen 5 of README "Performance"). ``None`` means
the ``IHCLIB_BACKEND`` environment variable, else ``"keras"`` (the study: its numbers stay bit
for bit). Every backend gets the same fixed input shape ``(batch_size, tile_size, tile_size,
3)``; OpenVINO's conversion is kept on disk (:mod:`ihclib.openvino_cache`) and its compiled
model once per model and shape (cached on the model object).
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any, Callable

import numpy as np

Predictor = Callable[[np.ndarray], np.ndarray]

BACKENDS = ("keras", "openvino")
# "auto" for a model without fused layers: the first installed (make bench compares them)
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


def compute_threads() -> int:
    """Threads for a runtime's own pool: ``$OMP_NUM_THREADS`` where set (what
    :func:`ihclib.distributed.local_cluster` gives each worker process, so that several workers
    on one machine do not fight over its cores), else :func:`cpu_threads`."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return cpu_threads()


def is_available(name: str) -> bool:
    """Whether the packages a backend needs are installed (nothing is imported)."""
    return all(importlib.util.find_spec(pkg) is not None for pkg in _REQUIRES[name])


def available_backends() -> list[str]:
    """Installed backends in :data:`AUTO_ORDER`."""
    return [name for name in AUTO_ORDER if is_available(name)]


def resolve_backend(name: str | None = None, model: Any = None) -> str:
    """A concrete backend name for ``name`` (None: $IHCLIB_BACKEND, else "keras"; "auto": Keras
    for a ``model`` with fused classical layers or where TensorFlow sees a GPU, else the first
    installed of AUTO_ORDER).
    ValueError naming the choices, or the extra to install."""
    if name is None:
        name = os.environ.get(ENV_VAR) or "keras"
    name = name.strip().lower()
    if name == "auto":
        if model is not None and (_has_fused_layers(model) or _gpu_visible()):
            return "keras"  # OpenVINO here runs on the CPU only
        return available_backends()[0]
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
    if not is_available(name):
        raise ValueError(f"backend {name!r} is not installed; pip install 'ihclib[{_EXTRA[name]}]'")
    return name


def _has_fused_layers(model: Any) -> bool:
    """Whether ``model`` has layers that ``ihclib denoise`` swaps for fused ones on Keras."""
    from .infer import has_fast_variants  # imports TensorFlow: only with a model

    return has_fast_variants(model)


def _gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU (then Keras runs the model there)."""
    from . import infer

    return infer._gpu_visible()


def traced_function(model: Any, tile_size: int, batch_size: int, jit_compile: bool = False):
    """The model's inference pass as a ``tf.function`` with one fixed input signature."""
    import tensorflow as tf

    spec = tf.TensorSpec((batch_size, tile_size, tile_size, 3), tf.float32, name="tiles")
    return tf.function(lambda x: model(x, training=False), input_signature=[spec], jit_compile=jit_compile)


def any_size_function(model: Any):
    """The model's inference pass as a ``tf.function`` for any batch (and tile size, where the
    model takes any): what OpenVINO converts once and reshapes for each use."""
    import tensorflow as tf

    height, width = tuple(model.input_shape[1:3])
    spec = tf.TensorSpec((None, height, width, 3), tf.float32, name="tiles")
    return tf.function(lambda x: model(x, training=False), input_signature=[spec])


OPENVINO_PRECISION = {"float32": "f32", "bfloat16": "bf16"}


def openvino_predictor(model: Any, tile_size: int, batch_size: int, threads: int | None = None,
                       streams: int = 1, precision: str = "float32") -> Predictor:
    """numpy batch -> numpy prediction through OpenVINO (CPU plugin).

    ``streams`` 1: one request on all ``threads`` (default :func:`compute_threads`; latency mode). More: the batch is split into
    ``streams`` parts run at once, each on ``threads / streams`` cores (throughput mode; the
    parts are padded to equal size). ``precision`` is pinned ("float32", so results match Keras
    also on CPUs where OpenVINO would otherwise infer in bf16; or "bfloat16"). The conversion
    comes from the disk cache where it can (:func:`ihclib.openvino_cache.converted`).
    """
    import openvino as ov

    from .openvino_cache import converted as cached_conversion

    threads = threads or compute_threads()
    streams = max(1, min(streams, batch_size, threads))
    part = math.ceil(batch_size / streams)
    general = cached_conversion(model, weights_fingerprint(model),
                                lambda: ov.convert_model(any_size_function(model).get_concrete_function()))
    shaped = general.clone()  # the cached model stays general; this one gets the fixed shape
    shaped.reshape({shaped.inputs[0]: ov.PartialShape([part, tile_size, tile_size, 3])})
    config = {"NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": threads,
              "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision]}
    compiled = ov.Core().compile_model(shaped, "CPU", config)
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
              jit_compile: bool = False, precision: str = "float32") -> Predictor:
    """A cached predictor for a Keras model on ``backend`` (resolved with :func:`resolve_backend`).

    ``jit_compile`` (XLA) applies to the Keras backend only, ``precision`` to the others (Keras
    runs the model in its layers' own dtypes: :func:`ihclib.infer.inference_copy`). The Keras
    predictor reads the model's weights at every call; a converted one (OpenVINO) holds a copy
    of them, so it is converted again once they have changed (:func:`cached_for_weights`).
    """
    name = resolve_backend(backend, model)
    if name == "keras":
        cache = _model_cache(model)
        key = (tile_size, batch_size, jit_compile)
        if key not in cache:
            cache[key] = keras_predictor(model, tile_size, batch_size, jit_compile)
        return cache[key]
    if precision not in OPENVINO_PRECISION:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(OPENVINO_PRECISION)}")
    return cached_for_weights(model, (name, tile_size, batch_size, precision),
                              lambda: _BUILDERS[name](model, tile_size, batch_size, precision=precision))


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
