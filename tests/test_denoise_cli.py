"""`ihclib denoise`: formats, bit depth, alpha, overwriting, bad files, exit status."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ihclib import infer
from ihclib.cli import main
from ihclib.images import load_image, save_image


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory):
    """A saved 1x1-convolution identity model: outputs must equal inputs pixel for pixel."""
    keras = pytest.importorskip("keras")
    inp = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(3, 1, use_bias=False)
    model = keras.Model(inp, conv(inp))
    conv.set_weights([np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3)])
    path = tmp_path_factory.mktemp("model") / "identity.keras"
    model.save(path)
    return str(path)


def write(path, h=40, w=50, dtype=np.uint8, alpha=False, seed=0):
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    pixels = rng.integers(0, top + 1, (h, w, 4 if alpha else 3), dtype=np.int64).astype(dtype)
    a = pixels[..., 3] if alpha else None
    save_image(path, pixels[..., :3].astype(np.float32) / top, dtype=dtype, alpha=a)
    return pixels


def denoise_cli(*args):
    return main(["denoise", *map(str, args), "--tile-size", "32", "--overlap", "8"])


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_dtype_kept(tmp_path, identity_model, ext, dtype, capsys):
    src = tmp_path / f"in{ext}"
    pixels = write(src, 45, 70, dtype)
    assert denoise_cli(src, "-o", tmp_path / f"out{ext}", "--model", identity_model) == 0
    out = load_image(tmp_path / f"out{ext}")
    assert out.dtype == dtype and out.alpha is None
    assert np.array_equal(np.round(out.rgb * np.iinfo(dtype).max).astype(dtype), pixels)
    line = capsys.readouterr().out
    assert "out" in line and re.search(r"\(70x45, uint(8|16), \d+\.\d\d s\)$", line.strip())  # hundredths


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_rgba_alpha_preserved(tmp_path, identity_model, dtype):
    pixels = write(tmp_path / "a.png", 33, 47, dtype, alpha=True)
    assert denoise_cli(tmp_path / "a.png", "--out-dir", tmp_path / "res", "--model", identity_model) == 0
    out = load_image(tmp_path / "res" / "a_denoised.png")
    assert out.dtype == dtype and np.array_equal(out.alpha, pixels[..., 3])


def test_jpeg_in_jpeg_out(tmp_path, identity_model):
    write(tmp_path / "j.jpg", 40, 40)
    assert denoise_cli(tmp_path / "j.jpg", "--out-dir", tmp_path, "--model", identity_model) == 0
    assert load_image(tmp_path / "j_denoised.jpg").shape == (40, 40)


def test_grayscale_refused(tmp_path, identity_model, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "g.png")
    assert denoise_cli(tmp_path / "g.png", "-o", tmp_path / "o.png", "--model", identity_model) == 1
    err = capsys.readouterr().err
    assert "g.png" in err and "grayscale" in err
    assert not (tmp_path / "o.png").exists()


def test_refuses_to_overwrite(tmp_path, identity_model, capsys):
    write(tmp_path / "in.png")
    (tmp_path / "out.png").write_bytes(b"precious")
    assert denoise_cli(tmp_path / "in.png", "-o", tmp_path / "out.png", "--model", identity_model) == 1
    err = capsys.readouterr().err
    assert "out.png" in err and "already exists" in err and len(err.strip().splitlines()) == 2  # + summary
    assert (tmp_path / "out.png").read_bytes() == b"precious"
    assert denoise_cli(tmp_path / "in.png", "-o", tmp_path / "out.png", "--model", identity_model,
                       "--overwrite") == 0
    assert load_image(tmp_path / "out.png").shape == (40, 50)


def test_overwrite_message_names_file(tmp_path, identity_model, capsys):
    write(tmp_path / "in.png")
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "in_denoised.png").write_bytes(b"x")
    assert denoise_cli(tmp_path / "in.png", "--out-dir", tmp_path / "res", "--model", identity_model) == 1
    err = capsys.readouterr().err
    assert "in_denoised.png" in err and "already exists" in err


def test_bad_files_reported_others_written(tmp_path, identity_model, capsys):
    write(tmp_path / "good1.png", seed=1)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image\n")
    write(tmp_path / "whole.png", 64, 64, seed=2)
    (tmp_path / "truncated.png").write_bytes((tmp_path / "whole.png").read_bytes()[:200])
    write(tmp_path / "good2.tif", seed=3)
    names = ["good1.png", "empty.png", "text.png", "truncated.png", "good2.tif"]
    status = denoise_cli(*[tmp_path / n for n in names], "--out-dir", tmp_path / "res", "--model", identity_model)
    assert status == 1
    err_lines = capsys.readouterr().err.strip().splitlines()
    for bad in ("empty.png", "text.png", "truncated.png"):
        lines = [line for line in err_lines if bad in line]
        assert len(lines) == 1 and "error" in lines[0]
        assert not (tmp_path / "res" / bad.replace(".png", "_denoised.png")).exists()
    assert (tmp_path / "res" / "good1_denoised.png").exists()
    assert (tmp_path / "res" / "good2_denoised.tif").exists()
    assert "Traceback" not in "\n".join(err_lines)


def test_output_with_several_inputs_refused(tmp_path, identity_model, capsys):
    write(tmp_path / "a.png")
    write(tmp_path / "b.png")
    status = denoise_cli(tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "o.png", "--model", identity_model)
    assert status == 2
    assert "single input" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_output_and_out_dir_are_exclusive_and_one_is_required(tmp_path):
    with pytest.raises(SystemExit):
        main(["denoise", str(tmp_path / "a.png")])
    with pytest.raises(SystemExit):
        main(["denoise", str(tmp_path / "a.png"), "-o", "x.png", "--out-dir", str(tmp_path)])


def test_same_stem_from_two_folders_refused(tmp_path, identity_model, capsys):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        write(tmp_path / d / "a.png")
    status = denoise_cli(tmp_path / "x" / "a.png", tmp_path / "y" / "a.png", "--out-dir", tmp_path, "--model", identity_model)
    assert status == 2 and "a_denoised.png" in capsys.readouterr().err


def test_bad_tile_size_and_bad_model(tmp_path, identity_model, capsys):
    write(tmp_path / "a.png")
    assert main(["denoise", str(tmp_path / "a.png"), "--out-dir", str(tmp_path), "--model", identity_model,
                 "--tile-size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    (tmp_path / "bad.keras").write_text("nope")
    assert denoise_cli(tmp_path / "a.png", "--out-dir", tmp_path, "--model", tmp_path / "bad.keras") == 2
    err = capsys.readouterr().err.strip()
    assert "bad.keras" in err and len(err.splitlines()) == 1


def test_bundled_model(tmp_path, capsys, monkeypatch):
    if not infer.bundled_model_path().is_file():
        pytest.skip("no bundled model (create it with `ihclib train --bundle`)")
    from ihclib import native

    made = []
    make = native.make_expected
    monkeypatch.setattr(native, "make_expected", lambda requests: made.append([r[0] for r in requests]) or make(requests))
    write(tmp_path / "a.png", 70, 90)
    assert main(["denoise", str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png")]) == 0
    out = load_image(tmp_path / "o.png")
    assert out.shape == (70, 90) and np.isfinite(out.rgb).all()
    if native.available():  # the compiled layers' outputs were made ahead, beside the read
        assert made == [["prefix", "upsample_concat", "upsample_concat"]]


class _Events:
    """What the command did, in order, and in which thread (``ihclib-io`` = beside the model)."""

    def __init__(self, monkeypatch):
        import threading

        from ihclib.commands import denoise as command

        self.log: list[tuple[str, str, str]] = []
        lock = threading.Lock()

        def traced(name, fn):
            def call(*args, **kwargs):
                key = str(args[0] if name != "restore" else args[1].path)
                with lock:
                    self.log.append((f"{name} start", key.rsplit("/", 1)[-1], threading.current_thread().name))
                out = fn(*args, **kwargs)
                with lock:
                    self.log.append((f"{name} end", key.rsplit("/", 1)[-1], threading.current_thread().name))
                return out
            return call

        monkeypatch.setattr(command, "load_image", traced("read", command.load_image))
        monkeypatch.setattr(command, "_restore", traced("restore", command._restore))
        monkeypatch.setattr(command, "save_image", traced("write", command.save_image))

    def index(self, event: str, name: str) -> int:
        return next(i for i, (e, n, _) in enumerate(self.log) if e == event and n.startswith(name))

    def thread(self, event: str, name: str) -> str:
        return self.log[self.index(event, name)][2]


def _combined_output(monkeypatch):
    """stdout and stderr into one buffer, so that the order between them is kept."""
    import io
    import sys

    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    monkeypatch.setattr(sys, "stderr", buf)
    return buf


def test_several_files_are_read_ahead_and_written_behind_in_order(tmp_path, identity_model, monkeypatch):
    pixels = {n: write(tmp_path / f"{n}.png", 64, 64, seed=i) for i, n in enumerate("abcd")}
    events = _Events(monkeypatch)
    out = _combined_output(monkeypatch)
    assert denoise_cli(*[tmp_path / f"{n}.png" for n in "abcd"], "--out-dir", tmp_path / "res",
                       "--model", identity_model) == 0
    for n, p in pixels.items():  # each output is its own input's
        assert np.array_equal(np.round(load_image(tmp_path / "res" / f"{n}_denoised.png").rgb * 255), p)
    lines = out.getvalue().strip().splitlines()
    assert [line.split(" -> ")[0].rsplit("/", 1)[-1] for line in lines] == ["a.png", "b.png", "c.png", "d.png"]
    for prev, nxt in ("ab", "bc", "cd"):
        # the next file is read beside the model, before this one is denoised
        assert events.thread("read start", nxt).startswith("ihclib-io")
        assert events.index("read start", nxt) < events.index("restore end", prev)
        # and this one is written beside the model, while the next one is denoised
        assert events.thread("write start", prev).startswith("ihclib-io")
        assert events.index("write start", prev) < events.index("restore end", nxt)
    # the first file is read beside the trace of the model for its size (test below)
    assert events.thread("read start", "a").startswith("ihclib-io")


@pytest.mark.parametrize("backend", ["keras", "auto"])  # auto: OpenVINO for this plain model, where installed
def test_the_first_file_is_read_while_the_model_is_traced_for_its_size(tmp_path, identity_model, monkeypatch, backend):
    import threading

    from ihclib import infer
    from ihclib.commands import denoise as command

    pixels = write(tmp_path / "a.png", 72, 200, seed=4)
    events = _Events(monkeypatch)
    prepared, traces = [], []
    prepare = command.prepare

    def recorded(model, shape, tile, *args, **kwargs):
        events.log.append(("prepare start", "a.png", threading.current_thread().name))
        prepare(model, shape, tile, *args, **kwargs)
        prepared.append((shape, tile))
        events.log.append(("prepare end", "a.png", threading.current_thread().name))

    make = infer._predictor_for

    def counted(*args, **kwargs):
        predict = make(*args, **kwargs)
        traces.append(predict)
        return predict

    monkeypatch.setattr(command, "prepare", recorded)
    monkeypatch.setattr(infer, "_predictor_for", counted)
    assert denoise_cli(tmp_path / "a.png", "-o", tmp_path / "a_out.png", "--model", identity_model,
                       "--backend", backend) == 0
    assert np.array_equal(np.round(load_image(tmp_path / "a_out.png").rgb * 255), pixels)
    assert events.thread("read start", "a").startswith("ihclib-io")
    assert events.thread("prepare start", "a") == "MainThread"
    assert events.index("prepare start", "a") < events.index("read end", "a")  # at once
    assert [shape for shape, _ in prepared] == [(72, 200)]  # from the header, before the pixels
    # denoise used the predictor made beforehand (traced or converted once), for the shape it needed
    assert len(traces) == 2 and len({id(p) for p in traces}) == 1
    if hasattr(traces[0], "function"):  # Keras
        assert traces[0].function.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("bad", ["text", "truncated"])
def test_a_bad_first_file_is_named_by_its_read_while_the_model_is_traced(tmp_path, identity_model, monkeypatch, bad):
    write(tmp_path / "whole.png", 64, 64)
    if bad == "text":
        (tmp_path / "a.png").write_text("not an image\n")
    else:
        (tmp_path / "a.png").write_bytes((tmp_path / "whole.png").read_bytes()[:300])
    out = _combined_output(monkeypatch)
    assert denoise_cli(tmp_path / "a.png", "-o", tmp_path / "a_out.png", "--model", identity_model) == 1
    lines = out.getvalue().strip().splitlines()
    assert lines[0].startswith("ihclib denoise: error:") and "a.png" in lines[0]
    assert ("truncated" if bad == "truncated" else "cannot") in lines[0]
    assert not (tmp_path / "a_out.png").exists()


@pytest.mark.parametrize("why", ["memory for one file only", "IHCLIB_OVERLAP=0"])
def test_files_run_one_after_another_without_memory_for_both_or_when_asked(tmp_path, identity_model, monkeypatch, why):
    from ihclib.commands import denoise as command

    for i, n in enumerate("ab"):
        write(tmp_path / f"{n}.png", 64, 64, seed=i)
    events = _Events(monkeypatch)
    if why == "IHCLIB_OVERLAP=0":
        monkeypatch.setenv("IHCLIB_OVERLAP", "0")
    else:
        monkeypatch.setattr(command, "available_memory", lambda: 64 * 64 * command.DENOISE_BYTES_PER_PIXEL)
    assert denoise_cli(tmp_path / "a.png", tmp_path / "b.png", "--out-dir", tmp_path / "res",
                       "--model", identity_model) == 0
    assert events.index("read start", "b") > events.index("write end", "a")  # not read ahead
    if why == "IHCLIB_OVERLAP=0":  # and nothing beside the model at all
        assert events.thread("read start", "b") == "MainThread"
    assert events.index("write end", "a") < events.index("restore start", "b")  # written before b's work
    assert (tmp_path / "res" / "b_denoised.png").exists()


def test_errors_of_reading_ahead_and_writing_behind_come_in_input_order(tmp_path, identity_model, monkeypatch):
    from ihclib.commands import denoise as command

    write(tmp_path / "a.png", seed=1)
    (tmp_path / "b.png").write_text("not an image\n")
    write(tmp_path / "c.png", seed=2)
    write(tmp_path / "d.png", seed=3)
    save = command.save_image

    def full_disk(path, *args, **kwargs):
        if str(path).endswith("c_denoised.png"):
            raise OSError(28, "No space left on device")
        return save(path, *args, **kwargs)

    monkeypatch.setattr(command, "save_image", full_disk)
    out = _combined_output(monkeypatch)
    status = denoise_cli(*[tmp_path / f"{n}.png" for n in "abcd"], "--out-dir", tmp_path / "res",
                         "--model", identity_model)
    assert status == 1
    lines = out.getvalue().strip().splitlines()
    assert [(line.startswith("ihclib denoise: error"), next(n for n in "abcd" if f"/{n}.png" in line)) for line in lines[:4]] == [
        (False, "a"), (True, "b"), (True, "c"), (False, "d")]
    assert "No space left on device" in lines[2] and lines[-1].endswith("2 of 4 file(s) failed")
    assert not (tmp_path / "res" / "c_denoised.png").exists() and (tmp_path / "res" / "d_denoised.png").exists()


def test_an_interrupted_run_still_names_the_file_it_finished_writing(tmp_path, identity_model, monkeypatch, capsys):
    from ihclib.commands import denoise as command

    for i, n in enumerate("ab"):
        write(tmp_path / f"{n}.png", 64, 64, seed=i)
    restore = command._restore

    def ctrl_c_on_b(args, image, *rest):
        if image.path.endswith("b.png"):
            raise KeyboardInterrupt
        return restore(args, image, *rest)

    monkeypatch.setattr(command, "_restore", ctrl_c_on_b)
    assert denoise_cli(tmp_path / "a.png", tmp_path / "b.png", "--out-dir", tmp_path / "res",
                       "--model", identity_model) == 130
    out = capsys.readouterr()
    assert (tmp_path / "res" / "a_denoised.png").exists() and "a.png -> " in out.out  # written behind, and said so
    assert not (tmp_path / "res" / "b_denoised.png").exists() and "interrupted" in out.err


def test_the_command_denoises_from_the_stored_pixels_without_a_float_copy(tmp_path, identity_model, monkeypatch):
    # issue 13: the float32 copy of the image in (and the float32 image out) cost 16 bytes a
    # pixel of fresh memory, slow to touch on the virtual machines this was measured on
    from ihclib import images

    pixels = write(tmp_path / "in.png", 70, 90)

    def no_floats(self):
        raise AssertionError("LoadedImage.rgb used")

    monkeypatch.setattr(images.LoadedImage, "rgb", property(no_floats))
    assert denoise_cli(tmp_path / "in.png", "-o", tmp_path / "out.png", "--model", identity_model) == 0
    assert np.array_equal(load_image(tmp_path / "out.png").pixels, pixels)



def test_the_command_runs_with_small_pages_for_numpy_and_puts_the_setting_back(tmp_path, identity_model, monkeypatch):
    # issue 13: NumPy's huge pages (its default above 4 MB), first touched on the 2-core VMs
    # measured, made a 4096 px run 3.35 s against 3.23 s
    from numpy._core import multiarray

    import ihclib.commands.denoise as command

    seen = []
    restore = command._restore

    def recording(*args, **kwargs):
        seen.append(multiarray._set_madvise_hugepage(False))  # the setting during the run
        return restore(*args, **kwargs)

    monkeypatch.setattr(command, "_restore", recording)
    before = multiarray._set_madvise_hugepage(True)
    try:
        write(tmp_path / "in.png")
        assert denoise_cli(tmp_path / "in.png", "-o", tmp_path / "out.png", "--model", identity_model) == 0
        assert seen == [False]
        assert multiarray._set_madvise_hugepage(before) is True  # put back after the run
    finally:
        multiarray._set_madvise_hugepage(before)
