"""Issue 11, point by point: every bad input gets one line, and nothing is lost or silently wrong.

Each test names the point it covers and failed before that point was fixed. The end-to-end walk
through the command line is tests/test_bad_inputs.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import numpy as np
import pytest
import tifffile
from nbformat.v4 import new_code_cell, new_notebook
from PIL import Image

from ihclib import images, infer
from ihclib.runner import pipeline
from helpers import keras_model, rgb
from ihclib.cli import main
from ihclib.images import ImageError, load_image, save_image

REPO = Path(images.__file__).resolve().parents[1]  # the checkout whose ihclib is under test


def _env() -> dict:
    """Environment for a child Python that imports this checkout's ihclib."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}




@pytest.fixture(scope="module")
def identity(tmp_path_factory) -> str:
    return keras_model(tmp_path_factory.mktemp("m") / "identity.keras")


def _one_error_line(err: str, *needles: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ---------------------------------------------------------------- 1. the pipeline deletes files


def _fake_notebook(path: Path) -> None:
    params = new_code_cell("profile = 'smoke'\nreports_dir = None")
    params.metadata["tags"] = ["parameters"]
    nbformat.write(new_notebook(cells=[params]), path)


@pytest.fixture
def fake_execute(monkeypatch):
    """Notebooks 'run' in no time: each writes tables/<stem>.csv into the build folder."""

    def execute(nb, out, params, root, log):
        tables = Path(root) / params["reports_dir"] / "tables"
        tables.mkdir(parents=True, exist_ok=True)
        (tables / f"{nb.stem}.csv").write_text(params["profile"])
        out.write_bytes(nb.read_bytes())
        return 0.0

    monkeypatch.setattr(pipeline, "_execute", execute)
    monkeypatch.setattr(pipeline, "machine_info", lambda: {})
    return execute


def test_1_pipeline_refuses_without_notebooks(tmp_path, capsys):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "mine.txt").write_text("precious")
    assert pipeline.run_study("smoke", root=tmp_path, runs=str(tmp_path / "runs")) != 0
    assert (tmp_path / "reports" / "mine.txt").read_text() == "precious"
    assert not (tmp_path / "reports" / "manifest.json").exists()
    assert "no notebooks" in capsys.readouterr().err


def test_1_pipeline_finds_notebooks_from_the_checkout_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pipeline.REPO_ROOT == REPO
    assert [nb.name for nb in pipeline.notebooks()] == sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_1_pipeline_never_deletes_a_file_it_did_not_write(tmp_path, fake_execute, capsys):
    (tmp_path / "notebooks").mkdir()
    for name in ("01_a", "02_b"):
        _fake_notebook(tmp_path / "notebooks" / f"{name}.ipynb")
    rep = tmp_path / "reports"
    (rep / "tables").mkdir(parents=True)
    (rep / "mine.txt").write_text("mine")
    (rep / "tables" / "01_a.csv").write_text("my own table")  # a name the study writes
    (rep / "benchmarks.json").write_text("{}")
    assert pipeline.run_study("smoke", root=tmp_path, runs=str(tmp_path / "runs")) == 0
    assert (rep / "mine.txt").read_text() == "mine" and (rep / "benchmarks.json").exists()
    assert (rep / "tables" / "01_a.csv").read_text() == "smoke"
    assert (rep / "tables" / "01_a.user.csv").read_text() == "my own table"
    assert "kept your reports/tables/01_a.csv as reports/tables/01_a.user.csv" in capsys.readouterr().out

    # a second run: the study no longer writes 02_b.csv, which the pipeline wrote, so it goes;
    # the user's files stay
    (tmp_path / "notebooks" / "02_b.ipynb").unlink()
    assert pipeline.run_study("smoke", root=tmp_path, runs=str(tmp_path / "runs")) == 0
    assert not (rep / "tables" / "02_b.csv").exists()
    assert (rep / "mine.txt").exists() and (rep / "tables" / "01_a.user.csv").exists()
    assert not list(tmp_path.glob(".reports-*"))


def test_1_partial_run_keeps_other_notebooks_outputs(tmp_path, fake_execute):
    (tmp_path / "notebooks").mkdir()
    for name in ("01_a", "02_b"):
        _fake_notebook(tmp_path / "notebooks" / f"{name}.ipynb")
    assert pipeline.run_study("smoke", root=tmp_path, runs=str(tmp_path / "runs")) == 0
    assert pipeline.run_study("quick", root=tmp_path, runs=str(tmp_path / "runs"), only=["02"]) == 0
    rep = tmp_path / "reports"
    assert (rep / "tables" / "01_a.csv").read_text() == "smoke" and (rep / "tables" / "02_b.csv").read_text() == "quick"
    assert set(json.loads((rep / "manifest.json").read_text())["files"]) >= {"tables/01_a.csv", "tables/02_b.csv"}


# ---------------------------------------------------------------- 2. stale resume


def test_2_fingerprint_mismatch_discards_resume_state(tmp_path, capsys):
    from ihclib.study.data import make_dataset
    from ihclib.study.profiles import get_profile
    from ihclib.train import FINGERPRINT_FILE, _discard_other_run, run_fingerprint

    profile = get_profile("smoke")
    ds = make_dataset(None, tile_size=profile.tile_size, stride=profile.stride, fractions=profile.fractions)
    a = run_fingerprint("dncnn_residual", ds, profile, 1)
    assert a == json.loads(json.dumps(a)) and a != run_fingerprint("dncnn_residual", ds, profile, 9)
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "state").write_text("epoch 1")
    (tmp_path / "log.csv").write_text("epoch,loss\n0,1\n")
    _discard_other_run(tmp_path, a)  # no fingerprint yet: an unknown run is not resumed
    assert not (tmp_path / "backup").exists() and not (tmp_path / "log.csv").exists()
    assert "starting afresh" in capsys.readouterr().out
    assert json.loads((tmp_path / FINGERPRINT_FILE).read_text()) == a

    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "state").write_text("epoch 1")
    _discard_other_run(tmp_path, a)  # the same run: resumed
    assert (tmp_path / "backup" / "state").exists() and capsys.readouterr().out == ""


@pytest.mark.slow
def test_2_interrupted_run_with_other_seed_is_not_resumed(tmp_path, capsys):
    import keras

    from ihclib.study.data import make_dataset
    from ihclib.study.profiles import get_profile
    from ihclib.train import train

    profile = get_profile("smoke").with_overrides(epochs=3, steps_per_epoch=1)
    ds = make_dataset(None, tile_size=profile.tile_size, stride=profile.stride, fractions=profile.fractions)
    class Crash(keras.callbacks.Callback):  # after epoch 1 is backed up
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        train("dncnn_residual", ds, profile, tmp_path, seed=1, verbose=0, callbacks=[Crash()])
    assert (tmp_path / "backup").exists()
    res = train("dncnn_residual", ds, profile.with_overrides(epochs=2), tmp_path, seed=9, verbose=0)
    assert res.sidecar["training"]["resumed"] is False and res.sidecar["seed"] == 9
    assert res.history.index.tolist() == [0, 1] and res.sidecar["training"]["epochs_run"] == 2
    assert "starting afresh" in capsys.readouterr().out


def test_2_runs_reuse_only_a_matching_fingerprint(tmp_path):
    from ihclib import __version__
    from ihclib.study import runs
    from ihclib.study.data import make_dataset
    from ihclib.study.profiles import get_profile
    from ihclib.train import FINGERPRINT_FILE, run_fingerprint

    profile = get_profile("smoke")
    ds = make_dataset(None, tile_size=profile.tile_size, stride=profile.stride, fractions=profile.fractions)
    sidecar = {"architecture": "dncnn_residual", "profile": profile.to_dict(), "data": ds.describe(), "seed": 0,
               "versions": {"ihclib": __version__}}
    assert runs._fits(tmp_path, sidecar, "dncnn_residual", profile, ds, 0)  # older runs: the sidecar decides
    (tmp_path / FINGERPRINT_FILE).write_text(json.dumps(run_fingerprint("dncnn_residual", ds, profile, 5)))
    assert not runs._fits(tmp_path, sidecar, "dncnn_residual", profile, ds, 0)
    (tmp_path / FINGERPRINT_FILE).write_text(json.dumps(run_fingerprint("dncnn_residual", ds, profile, 0)))
    assert runs._fits(tmp_path, sidecar, "dncnn_residual", profile, ds, 0)
    assert not runs._fits(tmp_path, sidecar, "switching_unet", profile, ds, 0)


# ---------------------------------------------------------------- 3. bundling into the package


def test_3_bundle_dir_is_the_users(monkeypatch, tmp_path):
    monkeypatch.setenv("IHCLIB_MODELS_DIR", str(tmp_path / "mine"))
    assert infer.user_models_dir() == tmp_path / "mine"
    monkeypatch.delenv("IHCLIB_MODELS_DIR")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    if sys.platform.startswith("linux"):
        assert infer.user_models_dir() == tmp_path / ".local" / "share" / "ihclib" / "models"
    package = Path(infer.__file__).resolve().parent
    assert package not in infer.user_models_dir().parents


def test_3_default_model_is_found_in_the_user_dir_first(monkeypatch, tmp_path):
    monkeypatch.setenv("IHCLIB_MODELS_DIR", str(tmp_path))
    assert infer.bundled_model_path() == infer.packaged_model_path()  # nothing bundled by the user
    keras_model(tmp_path / "default.keras", sidecar={"architecture": "mine", "input_multiple": 1})
    assert infer.bundled_model_path() == tmp_path / "default.keras"
    model, sidecar = infer.load_default_model()
    assert sidecar["architecture"] == "mine"


def test_3_train_command_has_one_bundle_path():
    from ihclib.study.commands import train as train_cmd

    assert not hasattr(train_cmd, "BUNDLE_DIR")


# ---------------------------------------------------------------- 4. float TIFFs on 0-255


@pytest.mark.parametrize("top", [1.0, 255.0, 65535.0])
def test_4_float_tiff_is_scaled_by_its_range(tmp_path, top):
    pixels = rgb()
    tifffile.imwrite(tmp_path / "f.tif", pixels * np.float32(top), photometric="rgb")
    img = load_image(tmp_path / "f.tif")
    assert img.dtype == np.uint16
    np.testing.assert_allclose(img.rgb, pixels, atol=1e-6)


@pytest.mark.parametrize("bad,reason", [(np.nan, "NaN"), (-20.0, "negative"), (1e6, "scale")])
def test_4_float_tiff_without_a_scale_is_refused(tmp_path, bad, reason):
    pixels = rgb() * 255
    pixels[3, 4, 1] = bad
    tifffile.imwrite(tmp_path / "f.tif", pixels, photometric="rgb")
    with pytest.raises(ImageError, match=reason) as exc:
        load_image(tmp_path / "f.tif")
    assert "f.tif" in str(exc.value) and "\n" not in str(exc.value)


# ---------------------------------------------------------------- 5. a model that outputs NaN


def test_5_nan_output_is_refused():
    with pytest.raises(ValueError, match="NaN or Inf"):
        infer.denoise(lambda b: b * np.nan, rgb(), tile_size=32, overlap=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        infer.denoise(lambda b: b + np.inf, rgb(), tile_size=32, overlap=0)


def test_5_nan_model_fails_with_one_line(tmp_path, capsys):
    save_image(tmp_path / "in.png", rgb())
    model = keras_model(tmp_path / "nan.keras", weight=np.nan)
    assert main(["denoise", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--model", model,
                 "--tile-size", "32", "--overlap", "0"]) == 1
    _one_error_line(capsys.readouterr().err, "in.png", "NaN")
    assert not (tmp_path / "out.png").exists()


# ---------------------------------------------------------------- 6. unwritable output folder


def test_6_output_under_a_file_is_one_line_per_input(tmp_path, identity, capsys):
    for n in ("a", "b"):
        save_image(tmp_path / f"{n}.png", rgb(seed=ord(n)))
    (tmp_path / "file").write_text("not a folder")
    rc = main(["denoise", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out-dir", str(tmp_path / "file" / "out"),
               "--model", identity, "--tile-size", "32", "--overlap", "8"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert len([line for line in err.splitlines() if "a_denoised.png" in line]) == 1
    assert len([line for line in err.splitlines() if "b_denoised.png" in line]) == 1


def test_6_failure_at_the_write_is_one_line_per_input_and_the_batch_goes_on(tmp_path, identity, capsys, monkeypatch):
    import tempfile

    for n in ("a", "b"):
        save_image(tmp_path / f"{n}.png", rgb(seed=ord(n)))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # what a read-only folder does, even as root
    rc = main(["denoise", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out-dir", str(tmp_path / "o"),
               "--model", identity, "--tile-size", "32", "--overlap", "8"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    for n in ("a", "b"):
        lines = [line for line in err.splitlines() if f"{n}_denoised.png" in line]
        assert len(lines) == 1 and "Permission denied" in lines[0]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_6_read_only_folder(tmp_path, identity, capsys):
    save_image(tmp_path / "a.png", rgb())
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc = main(["denoise", str(tmp_path / "a.png"), "--out-dir", str(ro), "--model", identity, "--tile-size", "32",
                  "--overlap", "8"])
    finally:
        ro.chmod(0o700)
    assert rc == 1
    _one_error_line(capsys.readouterr().err, "a_denoised.png", "not writable")


# ---------------------------------------------------------------- 7. output checked before the work


@pytest.fixture
def denoise_spy(monkeypatch):
    from ihclib.commands import denoise as denoise_cmd

    calls = []
    real = denoise_cmd.denoise
    monkeypatch.setattr(denoise_cmd, "denoise", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("out,reason", [("x.bmp", "unsupported output extension"), ("noext", "no extension"),
                                        ("dir/", "is a folder")])
def test_7_bad_output_name_before_any_work(tmp_path, identity, capsys, denoise_spy, out, reason):
    save_image(tmp_path / "in.png", rgb())
    (tmp_path / "dir").mkdir()
    assert main(["denoise", str(tmp_path / "in.png"), "-o", str(tmp_path) + "/" + out, "--model", identity]) == 2
    _one_error_line(capsys.readouterr().err, reason)
    assert denoise_spy == []


def test_7_sixteen_bit_into_jpeg_before_any_work(tmp_path, identity, capsys, denoise_spy):
    save_image(tmp_path / "in.png", rgb(), dtype=np.uint16)
    assert main(["denoise", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.jpg"), "--model", identity,
                 "--tile-size", "32", "--overlap", "8"]) == 1
    _one_error_line(capsys.readouterr().err, "o.jpg", "JPEG holds only 8-bit")
    assert denoise_spy == [] and not (tmp_path / "o.jpg").exists()


# ---------------------------------------------------------------- 8. leftovers after interruption


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_8_interrupted_write_leaves_no_temp_file(tmp_path, monkeypatch, exc):
    def interrupted(tmp, *args, **kwargs):
        Path(tmp).write_bytes(b"half an image")
        raise exc()

    monkeypatch.setattr(images, "_write_pixels", interrupted)
    with pytest.raises(exc):
        save_image(tmp_path / "out.png", rgb())
    assert list(tmp_path.iterdir()) == []


def test_8_sigterm_during_a_write_exits_143_and_leaves_nothing(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from pathlib import Path
        from ihclib import cli
        from ihclib.study.commands import check_data
        from ihclib.images import atomic_write

        def write(tmp):
            Path(tmp).write_text("half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)

        check_data.run = lambda args: atomic_write(Path({str(tmp_path)!r}) / "out.txt", write)
        sys.exit(cli.main(["check-data"]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=60)
    assert proc.returncode == 143, proc.stderr
    assert list(tmp_path.iterdir()) == []
    assert proc.stderr.strip() == "ihclib check-data: terminated"


def test_8_ctrl_c_during_start_up_is_one_line(monkeypatch, capsys):
    from ihclib import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    try:
        rc = cli.main(["denoise", "x.png", "-o", "y.png"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C during start-up escaped main() (a traceback)")
    assert rc == 130
    assert capsys.readouterr().err.strip() == "ihclib denoise: interrupted"


def test_8_interrupted_pipeline_leaves_no_build_folder(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    _fake_notebook(tmp_path / "notebooks" / "01_a.ipynb")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "old.txt").write_text("old")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_study("smoke", root=tmp_path, runs=str(tmp_path / "runs"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notebooks", "reports", "runs"]
    assert (tmp_path / "reports" / "old.txt").read_text() == "old"


def test_8_gitignore_matches_the_build_folders():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in (".reports-build-abc123/x.csv", ".reports-old-abc123/reports/x.csv", "reports/.x.png.ab12.png.tmp",
                 "runs/m/.m.keras.ab12.tmp.keras"):
        assert subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO).returncode == 0, path


# ---------------------------------------------------------------- 9. unclear errors


def test_9_text_file_named_keras(tmp_path, capsys):
    save_image(tmp_path / "in.png", rgb())
    (tmp_path / "m.keras").write_text("not a model\n")
    assert main(["denoise", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--model", str(tmp_path / "m.keras")]) == 2
    line = _one_error_line(capsys.readouterr().err, "m.keras", "not a Keras model file")
    assert "File not found" not in line


@pytest.mark.parametrize("channels", [1, 4])
def test_9_model_with_other_channel_count(tmp_path, capsys, channels):
    save_image(tmp_path / "in.png", rgb())
    model = keras_model(tmp_path / f"c{channels}.keras", channels_in=channels)
    assert main(["denoise", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--model", model,
                 "--tile-size", "32"]) == 2
    _one_error_line(capsys.readouterr().err, f"c{channels}.keras", "RGB")


def test_9_garbage_sidecar_names_the_file(tmp_path, identity, capsys):
    import shutil

    save_image(tmp_path / "in.png", rgb())
    shutil.copy(identity, tmp_path / "m.keras")
    (tmp_path / "m.json").write_text("{garbage")
    assert main(["denoise", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--model", str(tmp_path / "m.keras")]) == 2
    _one_error_line(capsys.readouterr().err, "m.json", "not valid JSON")


@pytest.mark.parametrize("option,value", [("--tile-size", "0"), ("--tile-size", "-3"), ("--stride", "-5"), ("--stride", "0")])
def test_9_check_data_bad_numbers(tmp_path, capsys, option, value):
    save_image(tmp_path / "a.png", rgb(80, 80))
    assert main(["check-data", str(tmp_path), option, value]) == 2
    _one_error_line(capsys.readouterr().err, option)


# ---------------------------------------------------------------- 10. large images


def test_10_no_fixed_pixel_limit(tmp_path, monkeypatch):
    import PIL.Image

    save_image(tmp_path / "big.png", rgb(50, 60))
    # Pillow refuses images over twice its limit (179 Mpx by default): scaled down here
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_image(tmp_path / "big.png").shape == (50, 60)
    assert images.image_size(tmp_path / "big.png") == (50, 60)
    assert PIL.Image.MAX_IMAGE_PIXELS == 1000  # put back for everyone else


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif"])
def test_10_limit_is_the_memory_it_needs(tmp_path, monkeypatch, ext):
    save_image(tmp_path / f"big{ext}", rgb(50, 60))
    monkeypatch.setattr(images, "available_memory", lambda: 50 * 60 * 10)
    with pytest.raises(ImageError, match="needs about .* GB of memory to load, but only .* GB is available"):
        load_image(tmp_path / f"big{ext}")


def test_10_available_memory_is_known_here():
    avail = images.available_memory()
    assert avail is None or avail > 0


# ---------------------------------------------------------------- 11. metadata kept


def _denoise(tmp_path, identity, src: Path, out: Path) -> None:
    assert main(["denoise", str(src), "-o", str(out), "--model", identity, "--tile-size", "32", "--overlap", "8"]) == 0


def test_11_tiff_resolution_kept(tmp_path, identity):
    src = tmp_path / "slide.tif"
    tifffile.imwrite(src, (rgb() * 255).astype(np.uint8), photometric="rgb", resolution=(40000, 40000),
                     resolutionunit="CENTIMETER")  # 0.25 um/px
    _denoise(tmp_path, identity, src, tmp_path / "out.tif")
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        tags = tf.pages[0].tags
        assert tags["XResolution"].value == (40000, 1) and tags["YResolution"].value == (40000, 1)
        assert int(tags["ResolutionUnit"].value) == 3  # centimetre
    assert load_image(tmp_path / "out.tif").meta.microns_per_pixel() == pytest.approx((0.25, 0.25))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_11_png_dpi_and_icc_kept(tmp_path, identity, dtype):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "in.png"
    save_image(src, rgb(), dtype=dtype, meta=images.ImageMeta((101600.0, 101600.0), "inch", icc_profile=icc))
    _denoise(tmp_path, identity, src, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as im:
        assert im.info["dpi"] == pytest.approx((101600, 101600), rel=1e-6)
        assert im.info["icc_profile"] == icc
    assert load_image(tmp_path / "out.png").dtype == dtype


def test_11_jpeg_exif_orientation_kept(tmp_path, identity):
    exif = Image.Exif()
    exif[274] = 6
    src = tmp_path / "photo.jpg"
    Image.fromarray((rgb() * 255).astype(np.uint8)).save(src, exif=exif.tobytes(), dpi=(300, 300))
    _denoise(tmp_path, identity, src, tmp_path / "out.jpg")
    with Image.open(tmp_path / "out.jpg") as im:
        assert im.getexif().get(274) == 6 and im.info["dpi"] == (300, 300)
    _denoise(tmp_path, identity, src, tmp_path / "out.tif")  # across formats too
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        assert int(tf.pages[0].tags["Orientation"].value) == 6


def test_11_microscope_resolution_survives_jpeg(tmp_path):
    meta = images.ImageMeta((40000.0, 40000.0), "cm")  # JFIF's 16 bits cannot hold 101,600 dpi
    save_image(tmp_path / "o.jpg", rgb(), meta=meta)
    assert load_image(tmp_path / "o.jpg").meta.microns_per_pixel() == pytest.approx((0.25, 0.25))


# ---------------------------------------------------------------- 12. tile constraint from the model


def test_12_tile_multiple_comes_from_the_sidecar(tmp_path, capsys):
    save_image(tmp_path / "in.png", rgb(70, 90))
    model = keras_model(tmp_path / "m4.keras", sidecar={"architecture": "switching_unet", "input_multiple": 4})
    assert main(["denoise", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--model", model,
                 "--tile-size", "48", "--overlap", "8"]) == 0
    np.testing.assert_allclose(load_image(tmp_path / "o.png").rgb, load_image(tmp_path / "in.png").rgb, atol=1 / 255)
    assert main(["denoise", str(tmp_path / "in.png"), "-o", str(tmp_path / "p.png"), "--model", model,
                 "--tile-size", "50"]) == 2
    _one_error_line(capsys.readouterr().err, "multiple of 4")


def test_12_input_multiple():
    assert infer.input_multiple({"input_multiple": 4}) == 4
    assert infer.input_multiple({}) == infer.input_multiple(None) == 32
    infer.check_tiling(48, 8, 1, multiple=4)
    with pytest.raises(ValueError, match="multiple of 32"):
        infer.check_tiling(48, 8, 1)


# ---------------------------------------------------------------- 13. slow help


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["denoise", "--help"], ["train", "--help"]])
def test_13_help_imports_no_tensorflow(args):
    script = textwrap.dedent(f"""
        import sys
        from ihclib.cli import main
        try:
            main({args!r})
        except SystemExit:
            pass
        heavy = [m for m in ("tensorflow", "keras", "pandas", "matplotlib") if m in sys.modules]
        print("HEAVY", heavy, file=sys.stderr)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=60)
    assert "HEAVY []" in proc.stderr, proc.stderr


def test_13_tensorflow_start_up_lines_are_silenced():
    script = textwrap.dedent("""
        import os, sys
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        from ihclib.cli import import_tensorflow_quietly
        import_tensorflow_quietly()
        import tensorflow as tf
        tf.config.list_physical_devices("GPU")  # without a GPU driver: "failed call to cuInit"
        os.write(2, b"a line of our own\\n")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "a line of our own\n"


def test_13_model_names_listed_without_keras_match_the_registry():
    from ihclib.registry import MODEL_NAMES
    from ihclib.model import MODELS

    assert tuple(MODELS) == MODEL_NAMES
