"""The first call of every study notebook: ``P, ds, dirs = setup(profile, data_dir, reports_dir)``.

Import this module before anything that imports TensorFlow. On import it loads TensorFlow with
the process's stderr (file descriptor 2) pointed at /dev/null: TensorFlow's C++ start-up lines
(absl's ``InitializeLog`` warning, "oneDNN custom operations are on", "Could not find cuda
drivers") are written there before ``TF_CPP_MIN_LOG_LEVEL`` can take effect when it is set from
inside a running kernel, and a Jupyter kernel shows every byte written to fd 2 as a pink stderr
block. A later ``import tensorflow`` is then a no-op and prints nothing. It then pins
TensorFlow's threads for the whole process (:func:`pin_study_threads`), so that a notebook's
inference is as bit-reproducible as its training.

``setup`` resolves every relative path from the repository root (the folder above the kernel's
working folder that holds ``pyproject.toml`` and ``notebooks/``), never from the kernel's folder:
an executed notebook in ``reports/notebooks/`` re-runs where it is and writes to ``reports/``.
Without a ``reports_dir`` (an interactive run) figures and tables go to ``runs/reports/``.
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ihclib.study import EMBEDDED

if TYPE_CHECKING:
    from ihclib.study.data import TileDataset
    from ihclib.study.profiles import Profile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # for processes this one starts (kernels, tools)

PROFILE_ENV_VAR = "IHC_PROFILE"
DEFAULT_PROFILE = "quick"


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 (C/C++ writes included) to /dev/null for a while.

    Python exceptions still propagate; only bytes written to stderr are dropped."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (if installed) and find its devices without its C++ start-up lines."""
    if "tensorflow" in sys.modules:  # too late to silence; ihclib/__init__ (imported first) set oneDNN
        return
    with quiet_stderr():
        try:
            import tensorflow as tf
        except ImportError:  # the study needs it, but this module must import without it
            return
        tf.config.list_physical_devices()  # the CUDA probe ("failed call to cuInit") logs here


import_tensorflow_quietly()


def pin_study_threads() -> None:
    """Run the notebook's TensorFlow one op at a time on two intra-op threads, before any op runs
    (:func:`ihclib.determinism.pin_training_threads`). Training sets it anyway; the evaluation
    (notebook 05) ran on TensorFlow's default threads, two ops at once, and a fresh-clone rerun of
    the quick profile once came out different in the last bits of one model's scores (3 of 41
    tables, at most 9e-10 dB) while every training history was identical: the race that
    :mod:`ihclib.determinism` describes for training, here in a forward pass."""
    if "tensorflow" not in sys.modules:  # not installed: nothing to pin
        return
    from ihclib.determinism import pin_training_threads

    with warnings.catch_warnings():  # a kernel that already ran TensorFlow keeps its threads
        warnings.simplefilter("ignore")
        pin_training_threads()


pin_study_threads()


@dataclass(frozen=True)
class StudyDirs:
    """Where a notebook reads and writes; ``figures`` and ``tables`` as ``ihclib.study.reports.save_*`` expect."""

    root: Path  # the repository root every relative path is taken from
    reports: Path
    figures: Path
    tables: Path
    runs: Path  # trained models
    data: str | None  # data_dir for ``Profile.dataset`` (None: the profile's data)


def find_root(start: str | os.PathLike | None = None) -> Path:
    """The repository root: the first folder from ``start`` (default: the working folder) upwards
    holding ``pyproject.toml`` and ``notebooks/``; else the checkout ihclib runs from; else ``start``."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir():
            return folder
    package_root = Path(__file__).resolve().parents[2]
    return package_root if (package_root / "pyproject.toml").is_file() else here


def from_root(path: str | os.PathLike | None, root: Path) -> str | None:
    """``path`` taken from ``root``: unchanged when absolute, None, or when the kernel already runs
    in ``root`` (so that papermill runs from the root record exactly the paths they were given)."""
    if path is None or Path(path).expanduser().is_absolute() or Path.cwd().resolve() == root:
        return None if path is None else str(path)
    return str(root / path)


def study_dirs(data_dir: str | None = None, reports_dir: str | os.PathLike | None = None,
               runs_dir: str | os.PathLike | None = None, root: Path | None = None) -> StudyDirs:
    """Folders of a notebook run, relative paths taken from the repository root.

    ``runs_dir`` None: ``$IHC_RUNS_DIR``, else ``runs/`` in the root. ``reports_dir`` None (an
    interactive run): ``<runs>/reports``, so that it never touches the committed ``reports/`` and
    leaves no temporary folder behind (a kernel that is killed runs no clean-up); the next
    interactive run replaces its files."""
    from ihclib.study.reports import RUNS_ENV_VAR, runs_dir as make_runs_dir

    root = root or find_root()
    runs = from_root(runs_dir, root) or from_root(os.environ.get(RUNS_ENV_VAR) or None, root) or root / "runs"
    runs = make_runs_dir(runs)
    reports = Path(from_root(reports_dir, root)) if reports_dir is not None else runs / "reports"
    data = data_dir if data_dir == EMBEDDED else from_root(data_dir, root)
    dirs = StudyDirs(root, reports, reports / "figures", reports / "tables", runs, data)
    dirs.figures.mkdir(parents=True, exist_ok=True)
    dirs.tables.mkdir(parents=True, exist_ok=True)
    return dirs


def setup(profile: str | None = None, data_dir: str | None = None, reports_dir: str | os.PathLike | None = None,
          runs_dir: str | os.PathLike | None = None,
          dataset: bool = True) -> tuple[Profile, TileDataset | None, StudyDirs]:
    """Profile, training dataset and folders of a study notebook, with one line saying which profile.

    Parameters
    ----------
    profile : name of an ``ihclib.study.profiles`` profile; None: ``$IHC_PROFILE``, else ``quick``.
    data_dir, reports_dir, runs_dir : the notebook's parameters (see ``study_dirs``).
    dataset : False skips cutting the training tiles (``ds`` is then None).

    Returns
    -------
    (Profile, TileDataset or None, StudyDirs)
    """
    from ihclib.study.profiles import get_profile

    P = get_profile(profile or os.environ.get(PROFILE_ENV_VAR) or DEFAULT_PROFILE)
    dirs = study_dirs(data_dir, reports_dir, runs_dir)
    print(f"profile {P.name}: {P.description}")
    return P, (P.dataset(dirs.data) if dataset else None), dirs
