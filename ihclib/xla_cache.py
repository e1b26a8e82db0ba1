"""XLA's compiled code kept on disk between runs of ``ihclib``, safe for processes that start together.

The bundled model's fused layers are compiled by XLA at the first tile of each tile shape: about
0.3-0.4 s of every ``ihclib denoise`` run (README, Performance). TensorFlow can keep that code on
disk (``TF_XLA_FLAGS=--tf_xla_persistent_cache_directory``), but it writes each entry straight to
its final name, so a process starting beside another (Dask workers, a job array) could read an
entry still being written. So each process gets a folder of its own, filled with copies of the
finished entries (copies, not hard links: TensorFlow rewrites an entry it cannot use in place,
which through a link would rewrite the shared one; they are tens of kB each); after the command
it hands back its new entries, each written under a temporary name and renamed into place
(atomic). Only complete entries are handed back or used (:func:`is_complete_entry`): TensorFlow
stops the run with "Read less bytes than requested" on a truncated one (measured), and a full
disk could leave one. Entries are kept per TensorFlow version and per CPU (its
instruction-set extensions): XLA compiles for the CPU it runs on, and a home folder shared by a
cluster's nodes must not hand AVX-512 code to a node without it.

Where: ``$IHCLIB_XLA_CACHE`` (``0`` or ``off``: no cache), else ``$XDG_CACHE_HOME/ihclib/xla``
(``~/.cache/ihclib/xla``). It only works when set before TensorFlow is imported (TensorFlow reads
its XLA flags once), so the ``ihclib`` command opens it; a user's own
``--tf_xla_persistent_cache_directory`` wins. Any problem with the folder (read-only, full disk)
turns the cache off for the run: it is never worth an error.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ENV_VAR = "IHCLIB_XLA_CACHE"
FLAG = "--tf_xla_persistent_cache_directory"
STALE_AFTER_S = 7 * 24 * 3600  # another machine's private folder this old: its process is gone


def user_cache_folder(env_var: str, name: str) -> Path | None:
    """``$env_var`` (``0`` or ``off``: None, no cache), else ``<the user's cache>/ihclib/<name>``
    (``$XDG_CACHE_HOME``, else ``~/.cache``; ``%LOCALAPPDATA%`` on Windows)."""
    env = os.environ.get(env_var, "").strip()
    if env.lower() in ("0", "off", "false", "no"):
        return None
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ihclib" / name


def cache_root() -> Path | None:
    """The cache folder (None: turned off by ``$IHCLIB_XLA_CACHE``)."""
    return user_cache_folder(ENV_VAR, "xla")


def machine_key(cpuinfo: str | None = None) -> str:
    """TensorFlow's version, the architecture and a hash of the CPU's feature flags: compiled
    code is only reused where all three match."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = platform.processor()
    flags = next((line.split(":", 1)[1] for line in cpuinfo.splitlines()
                  if line.split(":", 1)[0].strip() in ("flags", "Features")), cpuinfo)
    try:
        tf_version = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        tf_version = "none"
    cpu = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]
    return f"tf{tf_version}-{platform.machine() or 'cpu'}-{cpu}"


class XlaCache:
    """One process's view of the shared cache: ``open`` before TensorFlow is imported,
    ``close`` after the work (it hands back new entries and removes the private folder)."""

    def __init__(self, root: Path | None = None, key: str | None = None):
        self.root = root
        self.key = key
        self.entries: Path | None = None
        self.private: Path | None = None
        self.copied: set[str] = set()

    def open(self) -> bool:
        """Set ``TF_XLA_FLAGS`` to a private folder holding copies of the finished entries; False (and
        nothing set) when turned off, when TensorFlow is already imported, when the user set
        a cache of their own, or when the folder cannot be used."""
        root = self.root if self.root is not None else cache_root()
        flags = os.environ.get("TF_XLA_FLAGS", "")
        if root is None or "tensorflow" in sys.modules or FLAG in flags:
            return False
        try:
            self.entries = root / (self.key or machine_key())
            work = root / "work"
            self.entries.mkdir(parents=True, exist_ok=True)
            work.mkdir(parents=True, exist_ok=True)
            _remove_stale(work)
            self.private = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{_host()}-", dir=work))
            for entry in self.entries.iterdir():
                if entry.suffix != ".pb" or entry.name.startswith("."):
                    continue
                if is_complete_entry(entry):
                    shutil.copyfile(entry, self.private / entry.name)
                    self.copied.add(entry.name)
                else:  # damaged on disk: compile again, and let this run hand back a good one
                    entry.unlink(missing_ok=True)
        except OSError:
            self._remove_private()
            return False
        os.environ["TF_XLA_FLAGS"] = f"{flags} {FLAG}={self.private}".strip()
        return True

    def close(self) -> int:
        """Hand back the entries this process compiled (each complete before it appears under
        its name) and remove the private folder; returns how many were handed back."""
        if self.private is None or self.entries is None:
            return 0
        added = 0
        try:
            for entry in self.private.iterdir():
                if (entry.suffix != ".pb" or entry.name in self.copied or (self.entries / entry.name).exists()
                        or not is_complete_entry(entry)):
                    continue
                tmp = self.entries / f".{entry.name}.{os.getpid()}.tmp"
                try:
                    _link_or_copy(entry, tmp)
                    os.replace(tmp, self.entries / entry.name)
                    added += 1
                finally:
                    tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a cache that cannot be written is only slower next time
        finally:
            self._remove_private()
        return added

    def _remove_private(self) -> None:
        if self.private is not None:
            shutil.rmtree(self.private, ignore_errors=True)
            self.private = None

# XlaSerializedCacheEntry (tensorflow/compiler/jit/xla_compile_cache.proto): key = 1,
# hlo_module = 2, executable = 3, each length-delimited.
ENTRY_FIELDS = frozenset({1, 2, 3})


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def is_complete_entry(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a whole serialized cache entry: its top-level protobuf fields end
    exactly at the end of the file and key, HLO module and executable are all there. A file cut
    anywhere fails: inside a field its length runs past the end, between fields one is missing.
    Read with the wire format alone (TensorFlow must not be imported yet)."""
    try:
        data = Path(path).read_bytes()
        i, seen = 0, set()
        while i < len(data):
            tag, i = _varint(data, i)
            kind = tag & 7
            if kind == 0:
                _, i = _varint(data, i)
            elif kind == 1:
                i += 8
            elif kind == 2:
                length, i = _varint(data, i)
                i += length
            elif kind == 5:
                i += 4
            else:
                return False
            seen.add(tag >> 3)
        return i == len(data) and ENTRY_FIELDS <= seen
    except (OSError, ValueError):
        return False


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (instant, no space), else a copy (file systems without links)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _host() -> str:
    """This machine, as a short hex name (a home folder may be shared by a cluster's nodes)."""
    return hashlib.sha256(platform.node().encode()).hexdigest()[:8]


def _is_stale(folder: Path, now: float) -> bool:
    """A private folder whose process is gone: on this machine, its process id no longer runs
    (killed before ``close``); from another machine, untouched for :data:`STALE_AFTER_S`."""
    pid, host, _ = (folder.name.split("-", 2) + ["", ""])[:3]
    if host == _host() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except OSError:  # running, under another user
            return False
        return False
    return now - folder.stat().st_mtime > STALE_AFTER_S


def _remove_stale(work: Path) -> None:
    now = time.time()
    for folder in work.iterdir():
        try:
            if _is_stale(folder, now):
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass
