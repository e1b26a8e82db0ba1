"""The compiled prefix and trunk step (ihclib.native) compute what TensorFlow computes, and
ihclib falls back to TensorFlow where they cannot be built."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from ihclib import native  # noqa: E402
from ihclib.fast_layers import CrossChannelPrefix  # noqa: E402

from test_fast_layers import ihc_like  # noqa: E402

needs_compiled = pytest.mark.skipif(not native.available(), reason=f"no compiled prefix: {native.unavailable_reason()}")
NAMES = ("features", "flag", "spatial fill", "cross-channel fill", "contrast sums")


def noisy(shape, seed):
    """:func:`ihc_like` where it fits, else values on the 8-bit grid with s&p impulses."""
    if shape[1] >= 30 and shape[2] >= 41:
        return ihc_like(shape, seed=seed)[0]
    rng = np.random.default_rng(seed)
    x = np.round(rng.random((*shape, 3)) * 255) / 255
    u = rng.random(x.shape)
    return np.where(u < 0.1, 0.0, np.where(u > 0.9, 1.0, x)).astype(np.float32)


def tensorflow_prefix(x, windows=(3, 5, 7), features_dtype="float32"):
    with native.disabled():
        return [t.numpy() for t in CrossChannelPrefix(windows, features_dtype=features_dtype)(tf.constant(x))]


@needs_compiled
@pytest.mark.parametrize("shape", [(1, 45, 61), (2, 64, 96), (1, 7, 5), (1, 300, 40)])
@pytest.mark.parametrize("windows", [(3, 5, 7), (5, 7), (3,)])
def test_compiled_prefix_matches_the_tensorflow_prefix(shape, windows):
    x = noisy(shape, sum(shape))
    x[0, -3:, -4:, 1] = [0.9995, 0.999, 0.0005, 0.0011]  # near the extremes: flags that are not 0 or 1
    want = tensorflow_prefix(x, windows)
    got = native.prefix(x, windows)
    for name, w, g in zip(NAMES, want, got):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        # float32 rounding in other orders of summation; the fills divide by small determinants
        np.testing.assert_allclose(g, w, atol=2e-4, rtol=1e-5, err_msg=name)
    np.testing.assert_array_equal(got[1], want[1])  # the flags exactly


@needs_compiled
def test_any_split_into_bands_and_threads_gives_the_same_bits():
    x, _ = ihc_like((2, 130, 77), seed=2)
    one = native.prefix(x, threads=1)
    for threads in (2, 3, 7):
        for a, b in zip(one, native.prefix(x, threads=threads)):
            np.testing.assert_array_equal(a, b)


@needs_compiled
def test_bfloat16_features_are_the_float32_features_rounded_to_nearest_even():
    x, _ = ihc_like((1, 40, 50), seed=3)
    f32 = native.prefix(x)[0]
    bf16 = native.prefix(x, features_dtype="bfloat16")[0]
    assert bf16.dtype.name == "bfloat16"
    np.testing.assert_array_equal(bf16.view(np.uint16), tf.cast(f32, tf.bfloat16).numpy().view(np.uint16))
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        native.prefix(x, features_dtype="float16")


@needs_compiled
def test_reused_outputs_are_never_written_while_a_tensor_holds_them():
    """The layer passes reuse=True, and TensorFlow keeps an aligned array a NumPy function returns
    as its tensor, without a copy: a later call must leave the arrays of a live tensor alone."""
    x, y = noisy((1, 32, 32), 4), noisy((1, 32, 32), 5)
    # in a graph, as the layer runs (eager execution copies what a NumPy function returns)
    spatial = tf.function(lambda t: tf.numpy_function(lambda u: native.prefix(u, reuse=True)[2], [t], tf.float32),
                          autograph=False)
    first = spatial(tf.constant(x))
    kept = first.numpy().copy()
    for _ in range(8):  # TensorFlow's threads take turns; each has its own arrays
        second = spatial(tf.constant(y)).numpy()
        assert not np.array_equal(second, kept)
        np.testing.assert_array_equal(first.numpy(), kept)  # the tensor did not change
    del first
    third = native.prefix(x, reuse=True)[2]
    np.testing.assert_array_equal(third, kept)


@needs_compiled
def test_outputs_are_aligned_and_reused_once_nothing_holds_them():
    x = noisy((2, 24, 40), 7)
    outs = native.prefix(x, reuse=True)
    assert all(a.ctypes.data % native.ALIGN == 0 and a.flags.c_contiguous for a in outs)
    ids = [id(a) for a in outs]
    del outs
    assert [id(a) for a in native.prefix(x, reuse=True)] == ids  # the same arrays again: no fresh pages
    held = native.prefix(x, reuse=True)
    assert not {id(a) for a in native.prefix(x, reuse=True)} & {id(a) for a in held}
    assert all(a.ctypes.data % native.ALIGN == 0 for a in native.prefix(x))  # reuse=False too


@needs_compiled
def test_the_compiled_layer_gives_the_same_in_threads_as_alone():
    # two threads call the fused prefix at once: each call's outputs stay its own
    from concurrent.futures import ThreadPoolExecutor

    layer = CrossChannelPrefix()
    run = tf.function(lambda t: layer(t)[2], autograph=False)
    tiles = [noisy((1, 64, 64), seed) for seed in range(8)]
    alone = [run(tf.constant(t)).numpy() for t in tiles]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            together = list(pool.map(lambda t: run(tf.constant(t)).numpy(), tiles))
            for a, b in zip(alone, together):
                np.testing.assert_array_equal(a, b)


def test_the_layer_uses_tensorflow_when_the_compiled_prefix_is_off(monkeypatch):
    x = noisy((1, 24, 24), 6)
    calls = []
    monkeypatch.setattr(native, "prefix", lambda *a, **k: calls.append(1))
    with native.disabled():
        assert not native.available()
        outs = CrossChannelPrefix()(tf.constant(x))
    assert not calls and outs[0].shape == (1, 24, 24, 13)


def test_no_compiler_is_a_reason_not_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "no-such-compiler-ihclib")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    with pytest.raises(RuntimeError, match="no C compiler"):
        native.build()
    assert not native.available()
    assert "no C compiler" in native.unavailable_reason()


def test_off_by_environment(monkeypatch):
    monkeypatch.setenv(native.ENV_VAR, "0")
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    assert not native.available() and native.ENV_VAR in native.unavailable_reason()


def test_a_failed_compile_says_why_and_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'prefix.c:1: error: broken' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(RuntimeError, match="failed on prefix.c, trunk.c, png.c, pixels.c and head.c: prefix.c:1: error: broken"):
        native.build()
    assert not list(native.cache_dir().iterdir())  # no half-written library


@pytest.mark.skipif(not native.available(), reason="no C compiler here")
def test_the_library_is_built_once_per_source_compiler_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    first = native.build()
    assert first.parent == tmp_path / "ihclib" / "native" and first.is_file()
    stamp = first.stat().st_mtime_ns
    assert native.build() == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    monkeypatch.setattr(native, "_cpu_key", lambda: "flags : another cpu")
    assert native.library_path("cc") != first


def test_supports_only_what_prefix_c_computes():
    assert native.supports((3, 5, 7), 5, 5) and native.supports((5,), 5, 5)
    assert not native.supports((3, 5, 9), 5, 5)  # windows above 7
    assert not native.supports((5, 3), 5, 5)  # not ascending: prefix.c nests them
    assert not native.supports((3, 5, 7), 7, 5) and not native.supports((3, 5, 7), 5, 3)


@needs_compiled
def test_xla_compiled_prediction_uses_the_tensorflow_prefix():
    """``denoise(..., jit_compile=True)`` compiles the whole model with XLA, which cannot call a
    NumPy function: the copy it predicts with keeps the TensorFlow prefix."""
    keras = pytest.importorskip("keras")
    from ihclib import infer
    from ihclib.model import build_crosschannel_unet

    keras.utils.set_random_seed(0)
    model = build_crosschannel_unet(None, base=4)
    x = noisy((1, 48, 48), 7)[0]
    plain = infer.denoise(model, x, tile_size=48, batch_size=1, multiple=4, precision="auto", progress=False)
    xla = infer.denoise(model, x, tile_size=48, batch_size=1, multiple=4, precision="auto", progress=False,
                        jit_compile=True)
    np.testing.assert_allclose(xla, plain, atol=1e-3)


@needs_compiled
def test_a_thread_asking_during_the_build_waits_for_it(monkeypatch):
    """Not "unavailable" because another thread is still compiling: a predictor traced then
    would keep the TensorFlow prefix for good."""
    import threading
    import time

    real = native.build()
    monkeypatch.setattr(native, "build", lambda: time.sleep(0.3) or real)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(native.available())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [True, True, True]


@needs_compiled
@pytest.mark.parametrize("dtype", [np.float32, tf.bfloat16.as_numpy_dtype, np.uint8])
@pytest.mark.parametrize("cu, cs, block", [(32, 32, 2), (16, 16, 2), (3, 5, 2), (7, 2, 3), (64, 64, 2), (1, 1, 1)])
def test_upsample_concat_is_depth_to_space_then_concat_bit_for_bit(dtype, cu, cs, block):
    rng = np.random.default_rng(cu * 7 + cs)
    up = rng.normal(size=(2, 5, 7, block * block * cu)).astype(dtype)
    skip = rng.normal(size=(2, 5 * block, 7 * block, cs)).astype(dtype)
    want = tf.concat([tf.nn.depth_to_space(up, block), skip], -1).numpy() if block > 1 else np.concatenate(
        [up, skip], -1)
    for threads in (1, 2, 3):
        got = native.upsample_concat(up, skip, block, threads=threads)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@needs_compiled
def test_upsample_concat_refuses_what_does_not_fit():
    up, skip = np.zeros((1, 4, 4, 8), np.float32), np.zeros((1, 8, 8, 2), np.float32)
    with pytest.raises(ValueError, match="cannot put"):
        native.upsample_concat(up, skip.astype(np.float16))  # two dtypes
    with pytest.raises(ValueError, match="cannot put"):
        native.upsample_concat(up, skip[:, :6])  # the skip is not the upsampled size
    with pytest.raises(ValueError, match="cannot put"):
        native.upsample_concat(up[..., :6], skip)  # channels not a multiple of block**2


@needs_compiled
def test_upsample_concat_reuses_its_output_once_nothing_holds_it():
    up, skip = np.ones((1, 8, 8, 16), np.float32), np.ones((1, 16, 16, 4), np.float32)
    small = (np.ones((1, 4, 4, 16), np.float32), np.ones((1, 8, 8, 4), np.float32))
    first = native.upsample_concat(up, skip, reuse=True)
    address = first.ctypes.data
    assert address % native.ALIGN == 0
    assert native.upsample_concat(up, skip, reuse=True).ctypes.data != address  # still held
    del first
    native.upsample_concat(*small, reuse=True)  # the other level of the U-Net keeps its own
    assert native.upsample_concat(up, skip, reuse=True).ctypes.data == address


@needs_compiled
def test_outputs_a_traced_model_will_ask_for_are_made_ahead_and_then_reused(monkeypatch):
    # issue 13: the first tile spent about 0.08 s faulting in these arrays' pages; ihclib
    # denoise now makes them beside the image's read, once the model is traced
    monkeypatch.setattr(native, "_sets", {})
    native.expect_prefix((1, 24, 40, 3), "bfloat16")  # outside noting_expected: not noted
    with native.noting_expected() as expected:
        native.expect_prefix((1, 24, 40, 3), "bfloat16")
        native.expect_prefix((1, 24, 40, 3), "bfloat16")  # noted once
        native.expect_prefix((None, 24, 40, 3), "bfloat16")  # unknown sizes: nothing to make
        native.expect_upsample_concat((1, 6, 10, 64), (1, 12, 20, 16), 2, np.float32)
    assert len(expected) == 2
    assert native.make_expected(expected) == 2 and native.make_expected(expected) == 0  # each made once
    made = {purpose: [arrays[0].ctypes.data for sets in kept.values() for arrays in sets]
            for purpose, kept in native._sets.items()}
    x = np.random.default_rng(0).random((1, 24, 40, 3), dtype=np.float32)
    features = native.prefix(x, features_dtype="bfloat16", reuse=True)[0]
    assert features.ctypes.data in made["prefix"]  # the call took the set made ahead
    np.testing.assert_array_equal(features, native.prefix(x, features_dtype="bfloat16")[0])
    up, skip = np.ones((1, 6, 10, 64), np.float32), np.ones((1, 12, 20, 16), np.float32)
    assert native.upsample_concat(up, skip, reuse=True).ctypes.data in made["upsample_concat"]


@needs_compiled
def test_a_trace_notes_the_compiled_layers_outputs():
    from ihclib.fast_trunk import UpsampleConcat

    layer = UpsampleConcat()
    fn = tf.function(lambda u, s: layer([u, s]), input_signature=[tf.TensorSpec((1, 6, 10, 64), tf.float32),
                                                                 tf.TensorSpec((1, 12, 20, 16), tf.float32)])
    with native.noting_expected() as expected:
        fn.get_concrete_function()
    assert [(purpose, shapes) for purpose, shapes, _, _ in expected] == [("upsample_concat", ((1, 12, 20, 32),))]


@needs_compiled
@pytest.mark.parametrize("heads_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("window", [3, 5])
def test_compiled_head_matches_the_xla_head_and_keeps_the_gate_exact(heads_dtype, window):
    from ihclib import fast_layers

    x = noisy((2, 45, 61), 8)
    prefix = [t.numpy() for t in CrossChannelPrefix(contrast_window=window)(tf.constant(x))]
    _, flag, spatial, xc, sums = prefix
    assert 0 < np.count_nonzero(flag) < flag.size  # some values flagged, not all
    heads = tf.cast(tf.constant(np.random.default_rng(8).normal(0, 2, (2, 45, 61, 9)).astype(np.float32)),
                    heads_dtype).numpy()
    counts = fast_layers.window_counts(45, 61, window)
    want = fast_layers._head(x, flag, spatial, xc, sums, counts, tf.cast(heads, tf.float32)).numpy()
    got = native.head(x, flag, spatial, xc, sums, heads, window=window)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # expf's sigmoid, XLA's: rounding apart
    assert not np.allclose(got[flag > 0], x[flag > 0])  # the flagged values are restored
    np.testing.assert_array_equal(got[flag == 0], x[flag == 0])  # the hard gate: x exactly


@needs_compiled
def test_compiled_head_refuses_what_does_not_fit():
    x = np.zeros((1, 8, 8, 3), np.float32)
    parts = [x, x, x, x, np.zeros((1, 8, 8, 6), np.float32)]
    with pytest.raises(ValueError, match="heads"):
        native.head(*parts, np.zeros((1, 8, 8, 8), np.float32))  # 8 head channels, not 9
    with pytest.raises(ValueError, match="sums"):
        native.head(x, x, x, x, x, np.zeros((1, 8, 8, 9), np.float32))
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        native.head(*parts, np.zeros((1, 8, 8, 9), np.float16))
    with pytest.raises(ValueError, match="odd"):
        native.head(*parts, np.zeros((1, 8, 8, 9), np.float32), window=4)


@needs_compiled
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_float_to_pixels_compiled_is_numpys_bit_for_bit(dtype):
    from ihclib import images

    rng = np.random.default_rng(1)
    top = images.PIXEL_TOPS[np.dtype(dtype)]
    special = np.array([np.nan, -0.0, 0.0, 1.0, -1.0, 2.0, np.inf, -np.inf, 1e-30, 1 - 1e-7], np.float32)
    ties = ((np.arange(0, int(top)) + 0.5) / top).astype(np.float32)  # at and next to halves
    values = np.concatenate([special, ties, np.nextafter(ties, 1), np.nextafter(ties, 0),
                             rng.uniform(-0.2, 1.2, 30000).astype(np.float32)])
    image = np.resize(values, (97, 113, 3)).astype(np.float32)
    want = np.zeros((120, 140, 3), dtype)
    with native.disabled():  # NumPy's passes, the reference
        images.float_to_pixels(image[5:90, 7:100], want[11:96, 13:106])
    got = np.zeros_like(want)
    assert native.float_to_pixels(image[5:90, 7:100], got[11:96, 13:106], top)  # rectangles of images
    np.testing.assert_array_equal(got, want)
    assert not native.float_to_pixels(image[:, ::2], got[:97, :57], top)  # rows not contiguous: NumPy's way
    assert not native.float_to_pixels(image.astype(np.float64), np.zeros(image.shape, dtype), top)


def test_large_arrays_ask_for_small_pages(monkeypatch):
    calls = []

    class FakeLibc:
        def madvise(self, start, length, advice):
            calls.append((start.value, length.value, advice))
            return 0

    monkeypatch.setattr(native.ctypes, "CDLL", lambda *a, **k: FakeLibc())
    monkeypatch.setattr(native.sys, "platform", "linux")
    big = native._aligned_empty((1 << 21,), np.float32)  # 8 MB
    native._aligned_empty((16,), np.float32)  # small: left alone
    assert len(calls) == 1
    start, length, advice = calls[0]
    assert advice == 15 and start % 4096 == 0 and length % 4096 == 0  # MADV_NOHUGEPAGE, whole pages
    assert big.ctypes.data - native.ALIGN <= start and start + length <= big.ctypes.data + big.nbytes + native.ALIGN
