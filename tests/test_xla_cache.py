"""ihclib.xla_cache: XLA's compiled code kept between runs, one private folder per process, only
complete entries used or handed back."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from ihclib import xla_cache
from ihclib.xla_cache import XlaCache, is_complete_entry, machine_key


def _field(number: int, payload: bytes) -> bytes:
    def varint(n):
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


ENTRY = _field(1, b"key" * 5) + _field(2, b"hlo" * 100) + _field(3, b"\x00\xff" * 200)


def test_a_complete_entry_is_told_from_any_cut_of_it(tmp_path):
    path = tmp_path / "e.pb"
    path.write_bytes(ENTRY)
    assert is_complete_entry(path)
    cuts = [n for n in range(len(ENTRY)) if (path.write_bytes(ENTRY[:n]) or True) and is_complete_entry(path)]
    assert cuts == []  # every cut, at a field boundary too (a field is then missing), fails
    path.write_bytes(ENTRY + b"\x0f")  # a stray byte with an invalid wire type
    assert not is_complete_entry(path)
    assert not is_complete_entry(tmp_path / "missing.pb")


def test_compiled_code_is_only_shared_with_the_same_tensorflow_and_cpu():
    avx512 = "processor: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"
    assert machine_key(avx512) == machine_key(avx512.replace("sse2 avx2", "avx2 sse2"))
    assert machine_key(avx512) != machine_key("flags : fpu sse2 avx2\n")
    assert machine_key(avx512).startswith("tf")


@pytest.fixture
def no_tensorflow_yet(monkeypatch):
    """As in a fresh ``ihclib`` process: TensorFlow not imported, no XLA flags set."""
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    monkeypatch.delenv(xla_cache.ENV_VAR, raising=False)


def test_each_process_works_in_its_own_folder_and_hands_back_complete_entries(tmp_path, no_tensorflow_yet):
    entries = tmp_path / "cache" / "k"
    entries.mkdir(parents=True)
    (entries / "old.pb").write_bytes(ENTRY)
    (entries / "cut.pb").write_bytes(ENTRY[:-10])  # damaged on disk
    work = tmp_path / "cache" / "work"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed_here = work / f"{dead.pid}-{xla_cache._host()}-x"  # this machine, its process gone
    running_here = work / f"{os.getpid()}-{xla_cache._host()}-x"  # this machine, still running
    old_elsewhere = work / "123-0badc0de-x"  # another machine, untouched for long
    young_elsewhere = work / "124-0badc0de-x"
    for folder in (killed_here, running_here, old_elsewhere, young_elsewhere):
        folder.mkdir(parents=True)
    os.utime(old_elsewhere, (time.time() - 2 * xla_cache.STALE_AFTER_S,) * 2)
    cache = XlaCache(tmp_path / "cache", key="k")
    assert cache.open()
    private = cache.private
    assert os.environ["TF_XLA_FLAGS"] == f"--tf_xla_persistent_cache_directory={private}"
    assert sorted(p.name for p in private.iterdir()) == ["old.pb"]
    assert not (entries / "cut.pb").exists()
    assert not killed_here.exists() and not old_elsewhere.exists()
    assert running_here.exists() and young_elsewhere.exists()
    assert (private / "old.pb").stat().st_ino != (entries / "old.pb").stat().st_ino  # a copy, not a link
    (private / "new.pb").write_bytes(ENTRY)  # what TensorFlow compiled in this run
    (private / "half.pb").write_bytes(ENTRY[:50])  # e.g. a full disk
    assert cache.close() == 1
    assert sorted(p.name for p in entries.iterdir()) == ["new.pb", "old.pb"]
    assert (entries / "new.pb").read_bytes() == ENTRY
    assert not private.exists()


@pytest.mark.parametrize("why", ["off", "user's own cache", "tensorflow imported", "unwritable"])
def test_no_cache_when_off_or_too_late_or_unusable(tmp_path, no_tensorflow_yet, monkeypatch, why):
    root = tmp_path / "cache"
    if why == "off":
        monkeypatch.setenv(xla_cache.ENV_VAR, "0")
        root = None
    elif why == "user's own cache":
        monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_persistent_cache_directory=/theirs")
    elif why == "tensorflow imported":
        monkeypatch.setitem(sys.modules, "tensorflow", object())
    else:
        root.write_text("a file where the folder should be")
    before = os.environ.get("TF_XLA_FLAGS")
    cache = XlaCache(root)
    assert not cache.open()
    assert os.environ.get("TF_XLA_FLAGS") == before
    assert cache.close() == 0


def test_the_command_reuses_compiled_code_and_writes_the_same_pixels(tmp_path):
    """Two runs of ``ihclib denoise`` with the bundled model: the first compiles and hands its
    entries back, the second starts from them; the outputs are byte for byte the same. Without
    the compiled code (``IHCLIB_NATIVE=0``, as where no C compiler is found): its fused layers
    then run as XLA clusters (with it, its gate runs in ``head.c`` and nothing is compiled by XLA)."""
    from PIL import Image

    from ihclib.study.data import default_image

    src = tmp_path / "in.png"
    Image.fromarray(np.round(default_image()[:160, :192] * 255).astype(np.uint8)).save(src)
    env = {**os.environ, xla_cache.ENV_VAR: str(tmp_path / "cache"), "IHCLIB_NATIVE": "0"}
    env.pop("TF_XLA_FLAGS", None)
    outputs = []
    for run in range(2):
        out = tmp_path / f"out{run}.png"
        proc = subprocess.run([sys.executable, "-m", "ihclib", "denoise", str(src), "-o", str(out)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(out.read_bytes())
        (folder,) = [p for p in (tmp_path / "cache").iterdir() if p.name != "work"]
        entries = sorted(folder.glob("*.pb"))
        assert entries and all(is_complete_entry(e) for e in entries)
        assert list((tmp_path / "cache" / "work").iterdir()) == []  # private folder removed
        if run == 0:
            first = {e.name: e.stat().st_mtime_ns for e in entries}
    assert {e.name: e.stat().st_mtime_ns for e in entries} == first  # reused, not written again
    assert outputs[0] == outputs[1]
