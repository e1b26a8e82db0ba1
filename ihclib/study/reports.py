"""Where the study's outputs go, and how they are written: figures, tables, manifest, notebooks.

Notebooks call ``report_dirs(reports_dir)`` once and then ``save_figure`` / ``save_table``. With
``reports_dir=None`` (an interactive session, or nbval) outputs go to a temporary folder, so
running a notebook by hand never touches the committed ``reports/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd

from ihclib.images import atomic_write

RUNS_ENV_VAR = "IHC_RUNS_DIR"
PACKAGES = ("ihclib", "tensorflow", "keras", "numpy", "scikit-image", "scipy", "pandas", "matplotlib",
            "papermill", "nbval", "onnxruntime", "tf2onnx", "openvino")


@dataclass(frozen=True)
class ReportDirs:
    root: Path
    figures: Path
    tables: Path


def project_root() -> Path | None:
    """The source checkout this package runs from (editable install), or None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() else None


def report_dirs(reports_dir: str | os.PathLike | None) -> ReportDirs:
    """Folders for figures and tables; a fresh temporary folder when ``reports_dir`` is None."""
    root = Path(tempfile.mkdtemp(prefix="ihclib-reports-")) if reports_dir is None else Path(reports_dir)
    dirs = ReportDirs(root, root / "figures", root / "tables")
    dirs.figures.mkdir(parents=True, exist_ok=True)
    dirs.tables.mkdir(parents=True, exist_ok=True)
    return dirs


def runs_dir(path: str | os.PathLike | None = None) -> Path:
    """Where trained models live: the argument, else $IHC_RUNS_DIR, else ``runs/`` in the checkout
    (or ``~/.cache/ihc-denoise/runs`` for an installed package)."""
    if path in (None, ""):
        path = os.environ.get(RUNS_ENV_VAR) or None
    if path is None:
        root = project_root()
        path = root / "runs" if root is not None else Path.home() / ".cache" / "ihc-denoise" / "runs"
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


_atomic_write = atomic_write  # the package's one atomic writer (ihclib.images)


def save_figure(fig, dirs: ReportDirs, name: str, dpi: int = 110) -> Path:
    """Write a matplotlib figure as ``figures/<name>.png``."""
    return _atomic_write(dirs.figures / f"{name}.png",
                         lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png",
                                                 metadata={"Software": None}))


def save_table(df: pd.DataFrame, dirs: ReportDirs, name: str, index: bool = False, floatfmt: str = ".4g") -> Path:
    """Write a table as ``tables/<name>.csv`` and ``tables/<name>.md``."""
    _atomic_write(dirs.tables / f"{name}.md",
                  lambda tmp: Path(tmp).write_text(df.to_markdown(index=index, floatfmt=floatfmt) + "\n"))
    return _atomic_write(dirs.tables / f"{name}.csv", lambda tmp: df.to_csv(tmp, index=index))


def save_text(text: str, dirs: ReportDirs, name: str) -> Path:
    """Write Markdown text as ``tables/<name>.md``."""
    return _atomic_write(dirs.tables / f"{name}.md", lambda tmp: Path(tmp).write_text(text.rstrip() + "\n"))


def write_json(path: str | os.PathLike, obj: dict) -> Path:
    """JSON, pretty, atomically."""
    return _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit(root: Path | None = None) -> str:
    """HEAD's hash, with '+dirty' when the tree has uncommitted changes; 'unknown' outside git."""
    root = root or project_root() or Path.cwd()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_info() -> dict:
    """The CPU's model name and signature: vendor, family, model, stepping and a digest of its
    feature flags. oneDNN and numpy pick kernels by these, so the signature says whether two
    machines should give bit-identical results (``ihclib.runner.verify``)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("vendor_id", "cpu family", "model", "model name", "stepping", "flags") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:
                break  # the first processor is enough
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = hashlib.sha256(" ".join(sorted(fields.get("flags", "").split())).encode()).hexdigest()[:12]
    signature = " ".join([fields.get("vendor_id", platform.machine()), f"family {fields.get('cpu family', '?')}",
                          f"model {fields.get('model', '?')}", f"stepping {fields.get('stepping', '?')}",
                          f"flags {flags}"])
    return {"cpu": name, "cpu_signature": signature}


def machine_info() -> dict:
    """CPU model and signature, cores and visible GPUs, for the manifest and the benchmark."""
    info = {**cpu_info(), "cores": os.cpu_count(), "platform": platform.platform(terse=True)}
    try:
        import tensorflow as tf

        info["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception:  # the manifest must not fail because TF cannot enumerate devices
        info["gpus"] = []
    return info


_TMP_RE = re.compile(r"/tmp/[^\s'\"\\,)]*")
# TensorFlow's C++ start-up lines (absl logs written before logging is set up, e.g. "oneDNN
# custom operations are on", "Could not find cuda drivers") ignore TF_CPP_MIN_LOG_LEVEL
_TF_LOG_RE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWE]\d{4} \d\d:\d\d:\d\d)")


def sanitize_text(text: str, root: Path | None = None) -> str:
    """Replace this machine's absolute paths (checkout, venv, home, temp) with neutral names."""
    replacements = []
    if root is not None:
        replacements.append((str(root.resolve()), "."))
    replacements += [(sys.prefix, "<venv>"), (str(Path.home()), "~")]
    for old, new in replacements:
        if old and old not in ("/", "."):
            text = text.replace(old, new)
    return _TMP_RE.sub("<tmp>", text)


def clean_notebook(path: str | os.PathLike, root: Path | None = None, replace: dict[str, str] | None = None) -> None:
    """Strip machine-specific data from an executed notebook in place: papermill's input_path and
    output_path, absolute paths in sources and outputs, TensorFlow's C++ start-up log lines and
    kernel-side timestamps."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    pm = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path", "start_time", "end_time", "duration"):
        pm.pop(key, None)
    text = nbformat.writes(nb)
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    text = sanitize_text(text, root)
    nb = nbformat.reads(text, as_version=4)
    for cell in nb.cells:
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                out["text"] = "".join(line for line in out["text"].splitlines(keepends=True)
                                      if not _TF_LOG_RE.match(line))
                if not out["text"].strip():
                    continue
            outputs.append(out)
        if cell.cell_type == "code":
            cell.outputs = outputs
        cell.metadata.pop("execution", None)
        cell.metadata.get("papermill", {}).pop("start_time", None)
        cell.metadata.get("papermill", {}).pop("end_time", None)
        cell.metadata.get("papermill", {}).pop("duration", None)
    _atomic_write(path, lambda tmp: nbformat.write(nb, tmp))
