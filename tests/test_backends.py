"""Inference backends: choice by name, and agreement with Keras within 1e-4 (when installed)."""

from __future__ import annotations

import numpy as np
import pytest

from ihclib import backends
from ihclib.backends import predictor, resolve_backend
from ihclib.infer import denoise

TOL = 1e-4
OPTIONAL = [
    pytest.param("openvino", marks=pytest.mark.skipif(not backends.is_available("openvino"),
                                                      reason="openvino not installed")),
]


@pytest.fixture(scope="module")
def mini_unet():
    """The paper's layer types at a tiny size: strided Conv2D, BatchNormalization with non-trivial
    statistics (the runtimes fold it into the convolution), LeakyReLU, Conv2DTranspose, skips."""
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inp = keras.Input((None, None, 3))
    e1 = layers.LeakyReLU()(layers.Conv2D(8, 3, strides=2, padding="same")(inp))
    e2 = layers.Conv2D(16, 5, strides=2, padding="same")(e1)
    bn = layers.BatchNormalization()
    e2 = layers.LeakyReLU()(bn(e2))
    d1 = layers.LeakyReLU()(layers.Conv2DTranspose(8, 3, strides=2, padding="same")(e2))
    d1 = layers.Concatenate()([d1, e1])
    d0 = layers.LeakyReLU()(layers.Conv2DTranspose(3, 3, strides=2, padding="same")(d1))
    out = layers.Conv2D(3, 2, padding="same")(layers.Concatenate()([d0, inp]))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([rng.uniform(0.5, 2, gamma.shape), rng.normal(0, 0.1, beta.shape),
                    rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 3, var.shape)])
    return model


def test_default_is_keras_and_env_var_chooses(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert resolve_backend(None) == "keras"
    monkeypatch.setenv(backends.ENV_VAR, "Keras ")
    assert resolve_backend(None) == "keras"


def test_auto_is_keras_for_fused_layers_else_the_first_installed(monkeypatch, mini_unet):
    from ihclib.model import build_model

    fused = build_model("crosschannel_unet", None, width=4)  # only Keras runs its fused layers
    monkeypatch.setattr(backends, "is_available", lambda name: True)
    assert resolve_backend("auto", fused) == "keras"
    assert resolve_backend("auto", mini_unet) == "openvino"  # faster on the paper's layers (make bench)
    assert resolve_backend("auto") == "openvino"
    monkeypatch.setattr(backends, "is_available", lambda name: name == "keras")
    assert resolve_backend("auto", mini_unet) == "keras"
    assert resolve_backend(" AUTO ", fused) == "keras"


def test_auto_keeps_keras_where_tensorflow_sees_a_gpu(monkeypatch, mini_unet):
    from ihclib import infer

    monkeypatch.setattr(backends, "is_available", lambda name: True)
    monkeypatch.setattr(infer, "_gpu_visible", lambda: True)  # OpenVINO would run on the CPU
    assert resolve_backend("auto", mini_unet) == "keras"
    monkeypatch.setattr(infer, "_gpu_visible", lambda: False)
    assert resolve_backend("auto", mini_unet) == "openvino"


def test_the_command_runs_auto_unless_told(monkeypatch):
    from ihclib.commands.denoise import command_backend

    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert command_backend(None) == "auto"
    assert command_backend("keras") == "keras"
    monkeypatch.setenv(backends.ENV_VAR, "openvino")
    assert command_backend(None) == "openvino"
    assert command_backend("keras") == "keras"


def test_unknown_or_missing_backend_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'; choose from auto, keras"):
        resolve_backend("tensorrt")
    monkeypatch.setattr(backends, "is_available", lambda name: name == "keras")
    with pytest.raises(ValueError, match="unknown backend 'onnxruntime'"):  # removed (issue 12)
        resolve_backend("onnxruntime")
    with pytest.raises(ValueError, match=r"pip install 'ihclib\[openvino\]'"):
        resolve_backend("openvino")


def test_bad_backend_env_var_fails_denoise(monkeypatch, mini_unet):
    monkeypatch.setenv(backends.ENV_VAR, "nope")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        denoise(mini_unet, np.zeros((32, 32, 3), np.float32), tile_size=32, overlap=8)


@pytest.mark.parametrize("name", OPTIONAL)
def test_backend_matches_keras_on_tiles(name, mini_unet):
    tiles = np.random.default_rng(1).random((3, 64, 64, 3), dtype=np.float32)
    ref = predictor(mini_unet, 64, 3, "keras")(tiles)
    got = predictor(mini_unet, 64, 3, name)(tiles)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.abs(got - ref).max() < TOL
    assert np.abs(ref).max() > 0.1  # a model that outputs ~0 would agree trivially
    assert predictor(mini_unet, 64, 3, name) is predictor(mini_unet, 64, 3, name)  # converted once


@pytest.mark.parametrize("name", OPTIONAL)
def test_denoise_with_backend_matches_keras(name, mini_unet, monkeypatch):
    img = np.random.default_rng(2).random((150, 101, 3), dtype=np.float32)
    ref = denoise(mini_unet, img, tile_size=64, overlap=16, batch_size=4, backend="keras")
    got = denoise(mini_unet, img, tile_size=64, overlap=16, batch_size=4, backend=name)
    np.testing.assert_allclose(got, ref, atol=TOL)
    monkeypatch.setenv(backends.ENV_VAR, name)  # what `IHCLIB_BACKEND=... ihclib denoise` does
    np.testing.assert_allclose(denoise(mini_unet, img, tile_size=64, overlap=16, batch_size=4), ref, atol=TOL)


@pytest.mark.skipif(not backends.is_available("openvino"), reason="openvino not installed")
def test_openvino_matches_keras_on_the_paper_model():
    keras = pytest.importorskip("keras")
    from ihclib.model import build_paper_model

    keras.utils.set_random_seed(3)
    model = build_paper_model(None)
    tiles = np.random.default_rng(3).random((2, 32, 32, 3), dtype=np.float32)
    ref = predictor(model, 32, 2, "keras")(tiles)
    assert np.abs(predictor(model, 32, 2, "openvino")(tiles) - ref).max() < TOL


@pytest.mark.skipif(not backends.is_available("openvino"), reason="openvino not installed")
def test_openvino_streams_split_and_pad_the_batch(mini_unet):
    tiles = np.random.default_rng(4).random((3, 64, 64, 3), dtype=np.float32)  # 3 tiles, 2 streams: padded
    ref = predictor(mini_unet, 64, 3, "keras")(tiles)
    got = backends.openvino_predictor(mini_unet, 64, 3, threads=2, streams=2)(tiles)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < TOL


needs_openvino = pytest.mark.skipif(not backends.is_available("openvino"), reason="openvino not installed")


@needs_openvino
def test_openvino_in_bfloat16_is_close_and_cached_apart(mini_unet):
    tiles = np.random.default_rng(5).random((2, 64, 64, 3), dtype=np.float32)
    ref = predictor(mini_unet, 64, 2, "keras")(tiles)
    bf16 = predictor(mini_unet, 64, 2, "openvino", precision="bfloat16")
    assert bf16 is not predictor(mini_unet, 64, 2, "openvino")  # one compiled model per precision
    assert np.abs(bf16(tiles) - ref).max() < 0.05  # bf16 keeps 8 bits of mantissa (float32 where the CPU has no bf16)
    with pytest.raises(ValueError, match="unknown precision 'float16'"):
        predictor(mini_unet, 64, 2, "openvino", precision="float16")


@needs_openvino
def test_denoise_auto_runs_a_plain_model_on_openvino(mini_unet, monkeypatch):
    from ihclib.infer import _predictor_for

    predict = _predictor_for(mini_unet, 64, 2, "auto", False, "auto")
    assert hasattr(predict, "compiled")  # OpenVINO's compiled model, not a traced tf.function
    img = np.random.default_rng(6).random((100, 90, 3), dtype=np.float32)
    ref = denoise(mini_unet, img, tile_size=64, overlap=16, batch_size=2, backend="keras")
    np.testing.assert_allclose(denoise(mini_unet, img, tile_size=64, overlap=16, batch_size=2, backend="auto"),
                               ref, atol=TOL)


def _count_conversions(monkeypatch) -> list:
    import openvino as ov

    calls = []
    convert = ov.convert_model

    def counted(*args, **kwargs):
        calls.append(1)
        return convert(*args, **kwargs)

    monkeypatch.setattr(ov, "convert_model", counted)
    return calls


def _fresh(model):
    """A new model object with ``model``'s weights: no predictors cached on it (as in a new process)."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


@needs_openvino
def test_openvino_conversion_is_kept_on_disk_per_model_and_weights(mini_unet, tmp_path, monkeypatch):
    """A second process (here: a model object with no predictors yet) reads the converted model
    instead of converting again, for any tile and batch size; new weights are a new entry,
    never the old model's output."""
    from ihclib import openvino_cache

    monkeypatch.setenv(openvino_cache.ENV_VAR, str(tmp_path))
    calls = _count_conversions(monkeypatch)
    tiles = np.random.default_rng(7).random((2, 64, 64, 3), dtype=np.float32)
    first = predictor(_fresh(mini_unet), 64, 2, "openvino")(tiles)
    assert len(calls) == 1
    entries = [p for p in tmp_path.iterdir() if p.name != "work"]
    assert len(entries) == 1 and (entries[0] / openvino_cache.MODEL_FILE).is_file()
    assert not any((tmp_path / "work").iterdir())  # written aside, then moved into place

    same = _fresh(mini_unet)
    np.testing.assert_array_equal(predictor(same, 64, 2, "openvino")(tiles), first)
    small = np.ascontiguousarray(tiles[:, :32, :32])
    assert np.abs(predictor(same, 32, 2, "openvino")(small) - predictor(same, 32, 2, "keras")(small)).max() < TOL
    assert len(calls) == 1  # read back and reshaped, not converted

    same.set_weights([w * 0.5 for w in same.get_weights()])
    got = predictor(same, 64, 2, "openvino")(tiles)
    assert len(calls) == 2 and len([p for p in tmp_path.iterdir() if p.name != "work"]) == 2
    assert np.abs(got - predictor(same, 64, 2, "keras")(tiles)).max() < TOL
    assert np.abs(got - first).max() > 0.01


@needs_openvino
def test_a_damaged_or_unwritable_cache_only_converts_again(mini_unet, tmp_path, monkeypatch):
    from ihclib import openvino_cache

    tiles = np.random.default_rng(8).random((2, 64, 64, 3), dtype=np.float32)
    ref = predictor(mini_unet, 64, 2, "keras")(tiles)
    monkeypatch.setenv(openvino_cache.ENV_VAR, str(tmp_path))
    calls = _count_conversions(monkeypatch)

    def fresh():
        return _fresh(mini_unet)

    predictor(fresh(), 64, 2, "openvino")
    entry = next(p for p in tmp_path.iterdir() if p.name != "work")
    (entry / openvino_cache.MODEL_FILE).write_text("<not a model")
    assert np.abs(predictor(fresh(), 64, 2, "openvino")(tiles) - ref).max() < TOL
    assert len(calls) == 2 and (entry / openvino_cache.MODEL_FILE).read_text().startswith("<?xml")  # replaced
    weights = entry / "model.bin"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])  # cut short (a disk that filled up)
    assert np.abs(predictor(fresh(), 64, 2, "openvino")(tiles) - ref).max() < TOL
    assert len(calls) == 3 and weights.stat().st_size == size

    blocked = tmp_path / "a file"
    blocked.write_text("")
    monkeypatch.setenv(openvino_cache.ENV_VAR, str(blocked))  # a folder that cannot be made
    assert np.abs(predictor(fresh(), 64, 2, "openvino")(tiles) - ref).max() < TOL
    monkeypatch.setenv(openvino_cache.ENV_VAR, "off")
    assert openvino_cache.cache_root() is None
    assert np.abs(predictor(fresh(), 64, 2, "openvino")(tiles) - ref).max() < TOL
    assert len(calls) == 5


@needs_openvino
def test_the_cache_keeps_the_most_recently_used_entries(mini_unet, tmp_path, monkeypatch):
    import os
    import time

    from ihclib import openvino_cache

    monkeypatch.setenv(openvino_cache.ENV_VAR, str(tmp_path))
    monkeypatch.setattr(openvino_cache, "MAX_ENTRIES", 2)
    for i in range(3):  # three old entries, the first used last
        (tmp_path / f"old{i}").mkdir()
        os.utime(tmp_path / f"old{i}", (time.time() - 100 + (50 if i == 0 else i), time.time() - 100 + (50 if i == 0 else i)))
    (tmp_path / "work").mkdir()
    stale = tmp_path / "work" / "123-gone"
    stale.mkdir()
    os.utime(stale, (0, 0))
    predictor(_fresh(mini_unet), 64, 2, "openvino")
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name != "work")
    assert len(kept) == 2 and "old0" in kept and "old1" not in kept and "old2" not in kept
    assert not stale.exists()


def test_a_worker_limited_by_omp_num_threads_limits_openvino_too(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what a Dask worker of ihclib.distributed gets
    assert backends.compute_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert backends.compute_threads() == backends.cpu_threads()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert backends.compute_threads() == backends.cpu_threads()
