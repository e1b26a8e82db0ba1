"""Tiled denoising: shapes, exactness, agreement with whole-image prediction, memory."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from ihclib import infer
from ihclib.infer import check_tiling, denoise, tile_starts


def identity(batch: np.ndarray) -> np.ndarray:
    return batch.copy()


@pytest.fixture(scope="module")
def conv_model():
    """Three 3x3 convolutions: receptive-field radius 3, smaller than the window's zero margin."""
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    out = keras.layers.Conv2D(3, 3, padding="same")(x)
    return keras.Model(inp, out)


def rand_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


@pytest.mark.parametrize("shape", [(33, 47), (20, 20), (300, 257), (1, 7), (64, 64)])
def test_identity_model_returns_input_for_any_size(shape):
    img = rand_image(*shape)
    out = denoise(identity, img, tile_size=64, overlap=16, batch_size=3)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, img, atol=1e-6)


@pytest.mark.parametrize("tile,overlap", [(32, 0), (32, 5), (64, 31), (96, 48), (64, 48)])
def test_no_seams_with_any_tile_and_overlap(tile, overlap):
    img = rand_image(150, 131, seed=1)
    np.testing.assert_allclose(denoise(identity, img, tile_size=tile, overlap=overlap), img, atol=1e-6)


def test_constant_image_gives_constant_output():
    img = np.full((203, 97, 3), 0.37, np.float32)
    out = denoise(identity, img, tile_size=64, overlap=20)
    assert np.ptp(out) < 1e-6 and abs(float(out.mean()) - 0.37) < 1e-6


def test_integer_input_is_scaled_to_unit_range():
    img = (rand_image(40, 40) * 255).astype(np.uint8)
    np.testing.assert_allclose(denoise(identity, img, tile_size=32, overlap=8), img / 255.0, atol=1e-6)


def test_tiled_agrees_with_whole_image(conv_model):
    img = rand_image(128, 96, seed=2)  # both sides multiples of 32: whole image needs no padding
    whole = np.asarray(conv_model(img[None]))[0]
    tiled = denoise(conv_model, img, tile_size=64, overlap=16, batch_size=4)
    assert np.abs(tiled - whole).max() < 1e-3
    # without overlap the tile borders do show: the agreement above is not automatic
    seams = denoise(conv_model, img, tile_size=64, overlap=0, batch_size=4)
    assert np.abs(seams - whole).max() > 1e-2


def test_batching_invariance(conv_model):
    img = rand_image(150, 101, seed=3)
    ref = denoise(conv_model, img, tile_size=32, overlap=8, batch_size=1)
    for b in (3, 8, 64):
        np.testing.assert_allclose(denoise(conv_model, img, tile_size=32, overlap=8, batch_size=b), ref, atol=1e-5)


def test_keras_model_is_traced_once_per_batch_shape(conv_model):
    img = rand_image(200, 180, seed=4)
    denoise(conv_model, img, tile_size=64, overlap=16, batch_size=5)  # several batches, last one short
    denoise(conv_model, rand_image(190, 170), tile_size=64, overlap=16, batch_size=5)
    predict = infer.compiled_predictor(conv_model, 64, 5)
    assert predict.function.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("shape, tile, batch", [((200, 180), 64, 5), ((40, 30), 64, 8), ((130, 64), 64, 8)])
def test_prepare_traces_the_predictor_denoise_then_uses(gated_model, shape, tile, batch):
    # an image larger than a tile, one smaller (mirrored out to a tile), one with fewer tiles
    # than the batch (the batch shrinks to them): prepare must pick the same batch shape
    keras = pytest.importorskip("keras")
    model = keras.models.clone_model(gated_model)
    model.set_weights(gated_model.get_weights())
    infer.prepare(model, shape, tile_size=tile, overlap=16, batch_size=batch, precision="auto")
    from ihclib.backends import _model_cache

    def functions():
        """The traced predictors made so far: on the model, or on its inference copy."""
        cached = list(_model_cache(model).values())
        cached += [p for copy in cached if hasattr(copy, "layers") for p in _model_cache(copy).values()]
        return [p.function for p in cached if hasattr(p, "function")]

    prepared = functions()
    assert len(prepared) == 1 and prepared[0].experimental_get_tracing_count() == 1
    denoise(model, rand_image(*shape), tile_size=tile, overlap=16, batch_size=batch, precision="auto")
    # denoise used that one, traced once: no other predictor, no second trace
    assert functions() == prepared and prepared[0].experimental_get_tracing_count() == 1


def test_callable_gets_fixed_batches_streamed():
    shapes = []

    def model(batch):
        shapes.append(batch.shape)
        return batch

    img = rand_image(300, 257)
    denoise(model, img, tile_size=64, overlap=16, batch_size=4)
    n_tiles = len(tile_starts(300, 64, 16)) * len(tile_starts(257, 64, 16))
    assert len(shapes) == math.ceil(n_tiles / 4)
    assert set(shapes) == {(4, 64, 64, 3)}


def test_tile_starts_cover_and_overlap():
    for length in (64, 65, 100, 257, 1000):
        starts = tile_starts(length, 64, 16)
        assert starts[0] == 0 and starts[-1] + 64 == length
        assert all(0 < b - a <= 64 - 16 for a, b in zip(starts, starts[1:]))


def test_memory_does_not_grow_with_tiles():
    """Peak = output + weights + O(batch), not O(number of tiles): tiles are never all held."""
    img = rand_image(1024, 1024)
    tracemalloc.start()
    try:
        denoise(identity, img, tile_size=64, overlap=32, batch_size=4, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out_bytes, weight_bytes = img.nbytes, img.nbytes // 3
    all_tiles = len(tile_starts(1024, 64, 32)) ** 2 * 64 * 64 * 3 * 4
    assert all_tiles > 3 * img.nbytes  # holding every tile would blow the bound below
    assert peak < out_bytes + weight_bytes + 2_000_000


@pytest.mark.parametrize("tile,overlap,match", [(100, 16, "multiple of 32"), (0, 0, "multiple of 32"),
                                                (64, 64, "overlap"), (64, -1, "overlap")])
def test_bad_tiling_is_refused(tile, overlap, match):
    with pytest.raises(ValueError, match=match):
        check_tiling(tile, overlap)
    with pytest.raises(ValueError, match=match):
        denoise(identity, rand_image(40, 40), tile_size=tile, overlap=overlap)


def test_non_rgb_and_wrong_model_output_refused():
    with pytest.raises(ValueError, match="RGB"):
        denoise(identity, np.zeros((40, 40), np.float32), tile_size=32, overlap=0)
    with pytest.raises(ValueError, match="fully convolutional"):
        denoise(lambda b: b[..., :1], rand_image(40, 40), tile_size=32, overlap=0)


def test_progress_bar_on_request(capsys):
    denoise(identity, rand_image(64, 64), tile_size=32, overlap=0, batch_size=1, progress=True)
    assert "denoise" in capsys.readouterr().err
    denoise(identity, rand_image(64, 64), tile_size=32, overlap=0, batch_size=1)  # 4 batches: auto = off
    assert capsys.readouterr().err == ""


def test_missing_bundled_model_says_how_to_create_it(monkeypatch, tmp_path):
    monkeypatch.setattr(infer, "bundled_model_path", lambda: tmp_path / "default.keras")
    with pytest.raises(FileNotFoundError, match="ihclib train --bundle"):
        infer.load_default_model()


@pytest.fixture(scope="module")
def gated_model():
    """crosschannel_unet with random head weights (so the network's share is not zero)."""
    keras = pytest.importorskip("keras")
    from ihclib.model import build_crosschannel_unet

    keras.utils.set_random_seed(1)
    model = build_crosschannel_unet(None, base=4)
    rng = np.random.default_rng(1)
    for name in ("mask_logit", "correction_in_contrast_units", "spatial_share_logit"):
        layer = model.get_layer(name)
        layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    return model


def noisy_with_clean_corner(h: int = 160, w: int = 192) -> np.ndarray:
    """Values in [0.1, 0.9], with s&p impulses everywhere but the top-left 96x96 corner."""
    img = 0.1 + 0.8 * rand_image(h, w, seed=7)
    noise = np.random.default_rng(8).random(img.shape)
    noisy = np.where(noise < 0.05, 0.0, np.where(noise > 0.95, 1.0, img)).astype(np.float32)
    noisy[:96, :96] = img[:96, :96]
    return noisy


def test_hard_gate_is_recognised(gated_model):
    from ihclib.model import build_switching_unet

    assert infer.has_hard_gate(gated_model)
    assert not infer.has_hard_gate(build_switching_unet(None, base=4))  # its mask is never exactly 0
    assert not infer.has_hard_gate(identity)


def test_gated_model_returns_unflagged_tiles_bit_for_bit(gated_model):
    tile = (0.1 + 0.8 * rand_image(32, 32, seed=9))[None]
    np.testing.assert_array_equal(np.asarray(gated_model(tile)), tile)
    tile[0, 5, 5, 1] = 1.0  # one impulse: the model does change something
    assert not np.array_equal(np.asarray(gated_model(tile)), tile)


def test_skipping_unflagged_tiles_changes_nothing(gated_model):
    img = noisy_with_clean_corner()
    kwargs = dict(tile_size=32, overlap=8, batch_size=4, multiple=4)
    ref = denoise(gated_model, img, skip_unflagged=False, threads=False, **kwargs)
    np.testing.assert_array_equal(denoise(gated_model, img, **kwargs), ref)  # auto: skips, threaded
    assert not np.array_equal(ref, img)  # the noisy part was changed
    # a few scattered impulses: skipped and predicted tiles interleave, and overlaps add in order
    sparse = (0.1 + 0.8 * rand_image(160, 192, seed=10)).astype(np.float32)
    rng = np.random.default_rng(11)
    sparse[rng.integers(0, 160, 12), rng.integers(0, 192, 12), rng.integers(0, 3, 12)] = 1.0
    ref = denoise(gated_model, sparse, skip_unflagged=False, threads=False, **kwargs)
    np.testing.assert_array_equal(denoise(gated_model, sparse, **kwargs), ref)


def test_skipped_tiles_never_reach_the_model():
    img = noisy_with_clean_corner()
    calls = []

    def model(batch):
        calls.append(int((batch.reshape(len(batch), -1).max(axis=1) > 0).sum()))  # real tiles
        return batch

    out = denoise(model, img, tile_size=32, overlap=8, batch_size=4, skip_unflagged=True)
    n_tiles = len(tile_starts(160, 32, 8)) * len(tile_starts(192, 32, 8))
    clean = sum(1 for r in tile_starts(160, 32, 8) for c in tile_starts(192, 32, 8) if r + 32 <= 96 and c + 32 <= 96)
    assert clean > 0 and sum(calls) == n_tiles - clean
    np.testing.assert_allclose(out, img, atol=1e-6)


def test_threads_give_the_same_result(conv_model):
    img = rand_image(150, 101, seed=5)
    ref = denoise(conv_model, img, tile_size=32, overlap=8, batch_size=3, threads=False)
    np.testing.assert_array_equal(denoise(conv_model, img, tile_size=32, overlap=8, batch_size=3, threads=True), ref)


def test_model_error_in_pipeline_is_raised():
    def broken(batch):
        return np.full_like(batch, np.nan)

    with pytest.raises(ValueError, match="NaN or Inf"):
        denoise(broken, rand_image(100, 100), tile_size=32, overlap=8, batch_size=2)


def test_bfloat16_copy_keeps_the_gate_exact_and_stays_close(gated_model):
    img = noisy_with_clean_corner(128, 128)
    ref = np.asarray(gated_model(img[None]))[0]
    copy = infer.bfloat16_copy(gated_model)
    got = np.asarray(copy(img[None]))[0]
    assert got.dtype == np.float32
    assert any(layer.dtype_policy.name == "mixed_bfloat16" for layer in copy.layers)
    unflagged = (img > 0.01) & (img < 0.99)
    np.testing.assert_array_equal(got[unflagged], img[unflagged])  # the gate is float32: exact
    assert 0 < np.abs(got - ref).max() < 0.05  # bf16 rounding shows, but only as rounding


def test_precision_auto_is_bf16_only_for_gated_models_on_bf16_cpus(gated_model, conv_model, monkeypatch):
    monkeypatch.delenv(infer.PRECISION_ENV, raising=False)
    monkeypatch.setattr(infer, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(infer, "_gpu_visible", lambda: False)
    assert infer.resolve_precision(gated_model) == "float32"  # the library's default: the study's numbers
    assert infer.resolve_precision(gated_model, "auto") == "bfloat16"  # what `ihclib denoise` asks for
    assert infer.resolve_precision(gated_model, "auto", backend="openvino") == "float32"
    assert infer.resolve_precision(conv_model, "auto") == "float32"  # bf16 not checked for other models
    monkeypatch.setattr(infer, "_gpu_visible", lambda: True)
    assert infer.resolve_precision(gated_model, "auto") == "float32"  # measured on CPUs only
    monkeypatch.setattr(infer, "_gpu_visible", lambda: False)
    monkeypatch.setenv(infer.PRECISION_ENV, "float32")
    assert infer.resolve_precision(gated_model, "auto") == "float32"
    monkeypatch.setenv(infer.PRECISION_ENV, "bfloat16")
    assert infer.resolve_precision(conv_model) == "bfloat16"
    monkeypatch.setattr(infer, "cpu_has_bf16", lambda: False)
    monkeypatch.delenv(infer.PRECISION_ENV)
    assert infer.resolve_precision(gated_model, "auto") == "float32"
    assert infer.resolve_precision(conv_model, "bfloat16") == "bfloat16"  # asked for explicitly
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        infer.resolve_precision(gated_model, "fp8")
    with pytest.raises(ValueError, match="needs a Keras model"):
        denoise(identity, rand_image(40, 40), tile_size=32, overlap=0, precision="bfloat16")


def test_cpu_bf16_flag_is_read_from_cpuinfo():
    assert infer.cpu_has_bf16("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    assert infer.cpu_has_bf16("flags : fpu amx_tile amx_bf16\n")
    assert not infer.cpu_has_bf16("flags : fpu avx2 avx512f avx512_vnni\n")


def test_denoise_in_bf16_keeps_unflagged_values_exact(gated_model):
    img = noisy_with_clean_corner()
    kwargs = dict(tile_size=32, overlap=8, batch_size=4, multiple=4, skip_unflagged=False)
    f32 = denoise(gated_model, img, precision="float32", **kwargs)
    b16 = denoise(gated_model, img, precision="bfloat16", **kwargs)
    unflagged = (img > 0.01) & (img < 0.99)
    np.testing.assert_array_equal(b16[unflagged], f32[unflagged])
    assert 0 < np.abs(b16 - f32).max() < 0.05


# ---------------------------------------------------------------- tile size chosen per image


def test_auto_tiling_recomputes_less_overlap_than_the_fixed_default():
    from ihclib.infer import auto_tiling, tile_starts

    def computed(side, tile):
        return (len(tile_starts(side, tile, 32)) * tile) ** 2 / side**2

    tile, batch = auto_tiling((4096, 4096), overlap=32, multiple=4)
    assert (tile, batch) == (1056, 1)  # 4 tiles of 1056 per side: 4096 + 3 overlaps of 32
    assert computed(4096, tile) < 1.07 < 1.41 == round(computed(4096, 256), 2)
    assert auto_tiling((1000, 1500), overlap=32, multiple=4) == (544, 2)  # not a mirrored-out 1056


@pytest.mark.parametrize("shape, multiple", [((300, 300), 4), ((1000, 1500), 32), ((40, 5000), 4), ((777, 777), 1)])
def test_auto_tiling_respects_the_model_multiple_and_keeps_batches_near_half_a_megapixel(shape, multiple):
    from ihclib.infer import AUTO_TILES, auto_tiling, default_batch

    tile, batch = auto_tiling(shape, overlap=32, multiple=multiple)
    assert tile in AUTO_TILES and tile % multiple == 0
    assert batch == default_batch(tile) and 0.25e6 < batch * tile**2 < 1.0e6


def test_auto_tiling_gives_the_same_image_as_the_fixed_default():
    from ihclib.infer import auto_tiling

    class Blur:  # a local, shift-invariant "model": only seams could make the two differ
        def __call__(self, batch):
            return (batch + np.roll(batch, 1, axis=1) + np.roll(batch, -1, axis=1)) / 3.0

    image = np.random.default_rng(0).random((700, 650, 3), dtype=np.float32)
    tile, batch = auto_tiling(image.shape[:2], overlap=32, multiple=4)
    assert tile != 256
    auto = denoise(Blur(), image, tile_size=tile, batch_size=batch, overlap=32, multiple=4, progress=False)
    fixed = denoise(Blur(), image, tile_size=256, batch_size=8, overlap=32, multiple=4, progress=False)
    inner = (slice(16, -16), slice(16, -16))  # away from the tiles' own borders at the image edge
    np.testing.assert_allclose(auto[inner], fixed[inner], atol=1e-6)


# ---------------------------------------------------------------- 8-bit <-> float, fast and unchanged


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("work", [np.float32, np.float64])
def test_conversions_give_the_values_of_the_plain_formulas(monkeypatch, dtype, work):
    from ihclib import images

    monkeypatch.setattr(images, "FROM_FLOAT_BLOCK", 1000)  # several blocks and a remainder
    top = 255.0 if dtype == np.uint8 else 65535.0
    x = (np.random.default_rng(0).random((37, 29, 3)) * 1.4 - 0.2).astype(work)
    x[0, :4, 0] = [0.5 / top, 1.5 / top, 0.0, 1.0]  # halves round to even, like np.round
    assert np.array_equal(images.from_float(x, dtype), np.round(np.clip(x, 0.0, 1.0) * top).astype(dtype))
    assert np.array_equal(images.from_float(x[::2, ::3], dtype), np.round(np.clip(x[::2, ::3], 0.0, 1.0) * top).astype(dtype))
    ints = np.random.default_rng(1).integers(0, int(top) + 1, (13, 11, 3)).astype(dtype)
    assert np.array_equal(images.to_float(ints), ints.astype(np.float32) / np.float32(top))


# ---------------------------------------------------------------- PNG written on several cores


@pytest.mark.parametrize("shape", [(37, 29, 3), (40, 21, 4), (33, 17), (16, 9, 2), (1, 1, 3)])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("deflater", ["isal", "zlib"])
def test_png_encode_8bit_decodes_to_the_same_pixels_in_pillow_and_libpng(monkeypatch, shape, threads, deflater):
    import io
    import zlib

    import imagecodecs
    from isal import isal_zlib
    from PIL import Image

    from ihclib import images

    assert images._deflate() is isal_zlib  # a dependency: ISA-L by default
    if deflater == "zlib":  # where isal has no wheel
        monkeypatch.setattr(images, "_deflate", lambda: zlib)
    monkeypatch.setattr(images, "PNG_PART_BYTES", 100)  # several deflate pieces even here
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    pixels[: shape[0] // 2] //= 16  # something to compress
    png = images.png_encode_8bit(pixels, threads=threads)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)
    assert np.array_equal(imagecodecs.png_decode(png), pixels)
    with pytest.raises(ValueError, match="expected uint8"):
        images.png_encode_8bit(pixels.astype(np.uint16))


def test_adler32_combine_is_the_checksum_of_the_two_strings_joined():
    import zlib

    from ihclib.images import _adler32_combine

    rng = np.random.default_rng(2)
    for n1, n2 in [(0, 5), (5, 0), (1, 1), (70000, 3), (3, 200000), (65521, 65521), (131042, 1)]:
        a, b = rng.integers(0, 256, n1, dtype=np.uint8).tobytes(), rng.integers(0, 256, n2, dtype=np.uint8).tobytes()
        assert _adler32_combine(zlib.adler32(a), zlib.adler32(b), n2) == zlib.adler32(a + b)
    ones = b"\xff" * 300000  # sums near the modulus
    assert _adler32_combine(zlib.adler32(ones), zlib.adler32(ones), len(ones)) == zlib.adler32(ones + ones)


@pytest.mark.parametrize("block_bytes", [50, 1 << 20])
def test_png_rows_go_through_blocks_and_decode_the_same(monkeypatch, block_bytes):
    import io
    import struct
    import zlib

    import imagecodecs
    from PIL import Image

    from ihclib import images

    monkeypatch.setattr(images, "PNG_PART_BYTES", 1000)  # three pieces
    monkeypatch.setattr(images, "PNG_BLOCK_BYTES", block_bytes)  # one row or all rows of a piece at a time
    pixels = np.random.default_rng(1).integers(0, 256, (45, 23, 3), dtype=np.uint8)
    pixels[::3] //= 8
    png = images.png_encode_8bit(pixels, threads=3)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)
    assert np.array_equal(imagecodecs.png_decode(png), pixels)  # libpng checks the stream's Adler-32
    # the stream's Adler-32 (its last 4 bytes, before IDAT's CRC and IEND) is checked
    start = png.index(b"IDAT")
    data = png[start + 4 : -16]
    wrong = data[:-4] + bytes(4)
    broken = png[: start + 4] + wrong + struct.pack(">I", zlib.crc32(b"IDAT" + wrong)) + png[-12:]
    with pytest.raises(Exception, match="(?i)adler|check|data"):
        imagecodecs.png_decode(broken)


def test_the_fast_path_follows_the_models_weights_when_they_change(gated_model):
    # denoise(precision="auto") runs an inference copy holding the weights it was made with; it
    # went on giving the old model's output after set_weights (or more training) on the model
    keras = pytest.importorskip("keras")
    model = keras.models.clone_model(gated_model)
    model.set_weights(gated_model.get_weights())
    image = noisy_with_clean_corner()
    before = denoise(model, image, tile_size=64, overlap=16, precision="auto", progress=False)
    copy = infer._cached_inference_copy(model, infer.resolve_precision(model, "auto") == "bfloat16")
    rng = np.random.default_rng(3)
    model.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in model.get_weights()])
    after = denoise(model, image, tile_size=64, overlap=16, precision="auto", progress=False)
    fresh = keras.models.clone_model(model)
    fresh.set_weights(model.get_weights())
    expected = denoise(fresh, image, tile_size=64, overlap=16, precision="auto", progress=False)
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_array_equal(after, expected)
    assert infer._cached_inference_copy(model, infer.resolve_precision(model, "auto") == "bfloat16") is not copy


def test_what_holds_a_copy_of_the_weights_is_made_again_only_when_they_change(gated_model):
    keras = pytest.importorskip("keras")
    from ihclib.backends import cached_for_weights, weights_fingerprint

    model = keras.models.clone_model(gated_model)
    model.set_weights(gated_model.get_weights())
    made = []

    def make():
        made.append(weights_fingerprint(model))
        return len(made)

    assert cached_for_weights(model, "converted", make) == 1
    assert cached_for_weights(model, "converted", make) == 1  # the same weights: reused
    weights = model.get_weights()
    weights[-1] = weights[-1] + 1e-6  # one value of one bias
    model.set_weights(weights)
    assert cached_for_weights(model, "converted", make) == 2
    assert cached_for_weights(model, "other", make) == 3  # each key its own
    assert made[0] != made[1] == made[2]


def _blend_everywhere(plan, tiles):
    """The blend as it was before the tiles' own rectangles were copied: every tile summed and
    weighed over its whole area, every pixel divided (the reference for the fast blender)."""
    t = plan.tile
    out = np.zeros((plan.height, plan.width, 3), np.float32)
    weight = np.zeros((plan.height, plan.width), np.float32)
    for (r, c), tile in zip(plan.starts, tiles):
        w = plan.window(r, c)
        out[r : r + t, c : c + t] += tile * w[..., None]
        weight[r : r + t, c : c + t] += w
    return out / weight[..., None]


@pytest.mark.parametrize("shape, tile, overlap", [((4096, 4096), 1056, 32), ((700, 1500), 256, 32),
                                                  ((256, 256), 256, 32), ((300, 520), 256, 0),
                                                  ((513, 257), 128, 64), ((1000, 1000), 96, 40)])
def test_blender_copies_own_rectangles_with_the_same_bits_as_summing_everywhere(shape, tile, overlap):
    plan = infer._Plan(shape, tile, overlap, 1)
    rng = np.random.default_rng(0)
    tiles = [rng.random((tile, tile, 3), dtype=np.float32) for _ in plan.starts]
    blender = infer._Blender(plan)
    for k, (r, c) in enumerate(plan.starts):
        blender.add([(r, c, 0)], tiles[k][None], None)
    np.testing.assert_array_equal(blender.result(*shape), _blend_everywhere(plan, tiles))
    # most of every tile is copied, not weighed (the point of it), and no pixel is divided twice
    own = sum((ys.stop - ys.start) * (xs.stop - xs.start) for ys, xs in (plan.own(r, c) for r, c in plan.starts))
    shared = sum((ys.stop - ys.start) * (xs.stop - xs.start) for ys, xs in plan.shared_runs())
    assert own + shared == shape[0] * shape[1]
    if overlap and tile >= 256 and len(plan.starts) > 1:
        assert own > 0.8 * shape[0] * shape[1]


@pytest.mark.parametrize("shape, tile, overlap", [((700, 1500), 256, 32), ((300, 520), 256, 0),
                                                  ((513, 257), 128, 64), ((256, 256), 256, 32)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_pixel_blender_is_from_float_of_the_float_blend_bit_for_bit(shape, tile, overlap, dtype):
    # ihclib denoise blends straight into the pixels it writes, without a float32 image
    from ihclib.images import from_float

    plan = infer._Plan(shape, tile, overlap, 1)
    rng = np.random.default_rng(0)
    tiles = [(rng.random((tile, tile, 3), dtype=np.float32) * 1.4 - 0.2) for _ in plan.starts]  # out of range too
    floats, pixels = infer._Blender(plan), infer._PixelBlender(plan, np.dtype(dtype))
    for k, (r, c) in enumerate(plan.starts):
        floats.add([(r, c, 0)], tiles[k][None], None)
        pixels.add([(r, c, 0)], tiles[k][None], None)
    out = pixels.result(*shape)
    assert out.dtype == dtype and np.array_equal(out, from_float(floats.result(*shape), dtype))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("threads", [True, False])
def test_denoise_of_pixels_into_pixels_is_the_float_result_converted(gated_model, dtype, threads):
    from ihclib.images import from_float, to_float

    pixels = from_float(noisy_with_clean_corner(200, 230), dtype)  # skipped and predicted tiles
    kwargs = dict(tile_size=32, overlap=8, batch_size=3, multiple=4, threads=threads)
    ref = denoise(gated_model, to_float(pixels), **kwargs)
    assert np.array_equal(denoise(gated_model, pixels, **kwargs), ref)  # integer input: the same floats
    out = denoise(gated_model, pixels, out_dtype=dtype, **kwargs)
    assert out.dtype == dtype and np.array_equal(out, from_float(ref, dtype))
    small = pixels[:20, :27]  # mirrored out to one tile
    assert np.array_equal(denoise(gated_model, small, out_dtype=dtype, **kwargs),
                          from_float(denoise(gated_model, to_float(small), **kwargs), dtype))
    with pytest.raises(ValueError, match="out_dtype"):
        denoise(gated_model, pixels, out_dtype=np.float32, **kwargs)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_unflagged_test_on_pixels_is_the_test_on_their_floats(dtype):
    from ihclib.images import to_float

    top = np.iinfo(dtype).max
    for v in sorted({*range(0, min(300, top)), *range(max(0, top - 300), top + 1)}):
        tile = np.full((2, 2, 3), 100, dtype)
        tile[0, 0, 0] = v
        assert infer._unflagged(tile) == infer._unflagged(to_float(tile)), v


def test_batches_take_turns_in_two_buffers_and_the_last_one_is_padded_with_zeros():
    # a fresh 13 MB buffer per batch cost its pages every time (issue 13)
    buffers, padding = {}, []

    def model(batch):
        buffers[id(batch)] = batch  # kept alive: a freed buffer's address could come back
        padding.append(batch[1:].any())
        return batch  # the batch itself: the blend must not see it overwritten by the next cut

    img = rand_image(300, 257)
    for threads in (True, False):
        buffers.clear(), padding.clear()
        out = denoise(model, img, tile_size=64, overlap=16, batch_size=5, threads=threads, progress=False)
        np.testing.assert_allclose(out, img, atol=1e-6)  # the overlaps' weighted means round
        n_tiles = len(tile_starts(300, 64, 16)) * len(tile_starts(257, 64, 16))
        assert n_tiles % 5 == 1 and len(padding) == math.ceil(n_tiles / 5)  # the last batch: one tile
        assert len(buffers) == 2 and padding[-1] == False  # noqa: E712 (numpy bool)


def test_bf16_copy_sums_the_quarter_resolution_designs_residuals_in_bf16_and_nothing_classical():
    from ihclib.model import build_model

    model = build_model("crosschannel_s4d_cnn", None, width=8)
    for fused in (True, False):
        copy = infer.inference_copy(model, bfloat16=True, fused=fused)
        policies = {layer.name: layer.dtype_policy.name for layer in copy.layers}
        # a float32 sum between bf16 convolutions would cast its inputs and its output every tile
        assert [policies[f"residual_{i}{part}"] for i in (1, 2, 3) for part in ("", "_scale")] == ["mixed_bfloat16"] * 6
        classical = {"cross_channel_prior", "spatial_prior", "fill", "restored"} & set(policies)
        assert classical == (set() if fused else {"cross_channel_prior", "spatial_prior", "fill", "restored"})
        assert all(policies[name] == "float32" for name in classical)  # the hard gate stays exact


@pytest.mark.parametrize("arch", ["crosschannel_s4d_cnn", "crosschannel_s4d_unet"])
def test_inference_copy_folds_the_residual_scales_into_the_convolutions(arch):
    keras = pytest.importorskip("keras")
    from ihclib.model import build_model

    keras.utils.set_random_seed(3)
    model = build_model(arch, None, width=8)
    rng = np.random.default_rng(3)
    for layer in model.layers:  # random heads, so that the network's share shows in the output
        if layer.name in ("mask_logit", "correction_in_contrast_units", "spatial_share_logit"):
            layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    x = rng.random((1, 64, 64, 3)).astype(np.float32)
    x[x < 0.1], x[x > 0.9] = 0.0, 1.0
    copy = infer.inference_copy(model, fused=True)
    assert not any(isinstance(layer, keras.layers.Rescaling) for layer in copy.layers)  # no multiplication left
    assert any(isinstance(layer, keras.layers.Rescaling) for layer in infer.inference_copy(model, fused=False).layers)
    ref = np.asarray(model(x))
    assert not np.allclose(ref, x, atol=1e-3)  # the network does change the image
    np.testing.assert_allclose(np.asarray(copy(x)), ref, atol=2e-5)
    assert model.get_layer("residual_1_scale").get_config()["scale"] == 0.1  # the model itself is left as it was


def test_bf16_copy_runs_the_s4d_unets_way_back_to_full_resolution_in_bf16_and_its_heads_in_float32():
    from ihclib.fast_layers import HEAD_CONVOLUTIONS
    from ihclib.model import CONTEXT_LAYERS, build_model

    model = build_model("crosschannel_s4d_unet", None, width=16)
    for fused in (True, False):
        policies = {layer.name: layer.dtype_policy.name
                    for layer in infer.inference_copy(model, bfloat16=True, fused=fused).layers}
        # a 1x1 convolution like the heads, but inside the trunk: float32 there cast twice per tile
        assert [policies[name] for name in CONTEXT_LAYERS] == ["mixed_bfloat16"] * 2
        assert [policies[f"residual_{i}"] for i in (1, 2, 3, 4)] == ["mixed_bfloat16"] * 4
        heads = [name for name in HEAD_CONVOLUTIONS if name in policies]
        assert heads == ([] if fused else list(HEAD_CONVOLUTIONS))  # fused: one merged head
        assert all(policies[name] == "float32" for name in heads)
    plain = {layer.name: layer.dtype_policy.name for layer in infer.inference_copy(model, bfloat16=False).layers}
    assert plain[CONTEXT_LAYERS[0]] == "float32"  # only the bf16 copy changes it
