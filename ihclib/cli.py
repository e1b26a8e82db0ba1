"""The `ihclib` command (also `python -m ihclib`).

Each subcommand lives in ``ihclib/commands/<name>.py`` with ``register(subparsers)``; errors
that are the user's (bad file, bad folder, bad option) become one line on stderr and exit 2,
never a traceback. Ctrl-C exits 130 and SIGTERM 143, each with one line; both unwind through
``finally`` blocks, so no temporary file is left behind.

Only the standard library is imported here: ``ihclib --help`` and ``--version`` must not pay
for TensorFlow (seconds). A command that needs it sets ``needs_tensorflow`` and TensorFlow is
imported just before it runs, with its C++ start-up lines kept off the terminal.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from .xla_cache import XlaCache

# subcommand modules, in the order `ihclib --help` lists them: the study's (registering them
# imports nothing of the study: their modules load it when they run) and the tool's
COMMANDS = ("ihclib.study.commands.check_data", "ihclib.study.commands.train", "ihclib.commands.denoise")

# TensorFlow's C++ start-up lines, printed by absl before its logging is set up (so that
# TF_CPP_MIN_LOG_LEVEL does not silence them): "Could not find cuda drivers", "oneDNN custom
# operations are on", "This TensorFlow binary is optimized ..."
_TF_STARTUP_LINE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} \d\d:\d\d:\d\d"
    rb"|To enable the following instructions: )"
)


class Terminated(SystemExit):
    """SIGTERM, raised as SystemExit so that ``finally`` blocks and temp-file cleanups run."""

    def __init__(self) -> None:
        super().__init__(143)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (a SystemExit) instead of killing the
    process outright, so interrupted writes clean up; the previous handler is put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ logging at fatal errors only and its start-up lines filtered
    out of stderr (every other line still goes through).

    Level 3, not 2: on a machine without a GPU driver TensorFlow logs "failed call to cuInit"
    as an error when it first looks for devices. A user's own TF_CPP_MIN_LOG_LEVEL wins; Python
    exceptions are unaffected.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters): nothing to filter
        import tensorflow  # noqa: F401

        return
    read_end, write_end = os.pipe()

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not _TF_STARTUP_LINE.match(line):
                    os.write(saved, line)

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        import tensorflow  # noqa: F401
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the forwarder sees EOF
        thread.join(timeout=5)
        os.close(saved)


# TensorFlow imports Keras, and Keras imports pandas and matplotlib at start-up when they are
# installed, only to accept DataFrames and to plot images: `ihclib denoise` needs neither
# (about 0.6 s of its start-up).
KERAS_OPTIONAL = ("pandas", "matplotlib")


@contextmanager
def modules_hidden(modules: tuple[str, ...]) -> Iterator[None]:
    """Imports made inside see ``modules`` as not installed (optional imports fail quietly);
    afterwards they import normally for anyone who asks for them."""
    hidden = [m for m in modules if m not in sys.modules]
    for m in hidden:
        sys.modules[m] = None  # type: ignore[assignment]  # makes `import m` raise ImportError
    try:
        yield
    finally:
        for m in hidden:
            if m in sys.modules and sys.modules[m] is None:
                del sys.modules[m]


def build_parser() -> argparse.ArgumentParser:
    """The ``ihclib`` argument parser with every subcommand registered (no heavy imports)."""
    from ihclib import __version__

    parser = argparse.ArgumentParser(prog="ihclib", description="Restore noisy IHC images with CNNs.")
    parser.add_argument("--version", action="version", version=f"ihclib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from .images import ImageError  # after parsing: --help never imports numpy

    user_errors: tuple[type[BaseException], ...] = (ImageError, FileNotFoundError, ValueError)
    xla_cache = XlaCache()
    try:
        if getattr(args, "needs_tensorflow", False):
            xla_cache.open()  # before TensorFlow reads its XLA flags
            with modules_hidden(KERAS_OPTIONAL if getattr(args, "lean_keras", False) else ()):
                import_tensorflow_quietly()
                import keras  # noqa: F401  # (TensorFlow may load it lazily)
        return int(args.func(args) or 0)
    except user_errors as exc:
        print(f"ihclib {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a disk or permission problem the command did not expect
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"ihclib {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        xla_cache.close()  # also after Ctrl-C: an entry is complete once the call that compiled it returned


def main(argv: list[str] | None = None) -> int:
    """Run ``ihclib`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    command = "ihclib"
    try:
        with sigterm_raises():
            args_preview = sys.argv[1:] if argv is None else argv
            command = next((f"ihclib {a}" for a in args_preview if not a.startswith("-")), "ihclib")
            return _run(argv)
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{command}: terminated", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
