"""Run the whole study: execute the numbered notebooks in order with papermill -> ``reports/``.

``python -m ihclib.pipeline --profile quick`` (what ``make reproduce`` runs):

* builds everything in a temporary folder beside ``reports/`` and swaps it into place only when
  every notebook has succeeded, so a failure leaves the previous ``reports/`` as it was;
* keeps a failing executed notebook in ``runs/failed/`` and prints its error (the kernels'
  own stderr, TensorFlow's start-up lines, goes to ``runs/kernels.log``);
* writes ``reports/manifest.json``: profile, seed, data, package versions, git commit, CPU/GPU and
  the wall time of each notebook.

``--nbval-refs DIR`` instead executes every notebook under the smoke profile into ``DIR``: the
stored outputs that ``make test`` (nbval) compares against.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from .data import data_label
from .reports import RUNS_ENV_VAR, clean_notebook, git_commit, machine_info, package_versions, runs_dir, write_json

KEEP = ("benchmarks.json",)  # written by `make bench`, not by the notebooks: carried over


def notebooks(root: Path) -> list[Path]:
    """The numbered notebooks, in order."""
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@contextmanager
def _stderr_to(path: Path):
    """Send this process's (and so the kernels') file descriptor 2 to ``path`` for a while:
    the kernels' start-up chatter goes to a log instead of between the progress lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _execute(nb: Path, out: Path, params: dict, root: Path, log: Path) -> float:
    import papermill as pm

    start = time.perf_counter()
    with _stderr_to(log):
        pm.execute_notebook(str(nb), str(out), parameters=params, kernel_name="python3",
                            cwd=str(root), progress_bar=False, log_output=False)
    return time.perf_counter() - start


def _error_of(path: Path) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"{output.get('ename')}: {output.get('evalue')}"
    return "unknown error"


def run_study(profile: str = "quick", data_dir: str | None = None, reports: str = "reports",
              runs: str | None = None, root: Path | None = None, only: list[str] | None = None) -> int:
    """Execute every notebook into a fresh copy of ``reports`` and swap it into place."""
    from .profiles import get_profile

    root = (root or Path.cwd()).resolve()
    prof = get_profile(profile)  # fail early on an unknown profile
    reports_dir = (root / reports).resolve()
    runs_path = runs_dir(runs if runs is not None else root / "runs")
    build = Path(tempfile.mkdtemp(prefix=".reports-build-", dir=root))
    if only and reports_dir.exists():  # a partial run keeps the other notebooks' outputs
        shutil.copytree(reports_dir, build, dirs_exist_ok=True)
    (build / "notebooks").mkdir(exist_ok=True)
    book = [nb for nb in notebooks(root) if not only or any(nb.name.startswith(o) for o in only)]
    rel_build = os.path.relpath(build, root)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    print(f"ihc-denoise study: profile {profile}, data {data_label(data_dir)}, {len(book)} notebooks")
    for i, nb in enumerate(book, 1):
        out = build / "notebooks" / nb.name
        print(f"[{i}/{len(book)}] {nb.name} ...", end=" ", flush=True)
        params = {"profile": profile, "data_dir": data_dir, "reports_dir": rel_build,
                  "runs_dir": os.path.relpath(runs_path, root)}
        try:
            timings[nb.name] = _execute(nb, out, params, root, runs_path / "kernels.log")
        except Exception as exc:  # papermill raises its own error types plus kernel failures
            failed = runs_path / "failed"
            failed.mkdir(parents=True, exist_ok=True)
            kept = failed / nb.name
            if out.exists():
                shutil.copy(out, kept)
                clean_notebook(kept, root, {rel_build: reports})
                reason = _error_of(kept)
            else:
                reason = f"{type(exc).__name__}: {exc}"
            print("FAILED")
            print(f"error in {nb.name}: {reason}", file=sys.stderr)
            if out.exists():
                print(f"the executed notebook is kept for inspection: {os.path.relpath(kept, root)}", file=sys.stderr)
            print(f"{reports} was left as it was.", file=sys.stderr)
            shutil.rmtree(build, ignore_errors=True)
            return 1
        clean_notebook(out, root, {rel_build: reports})
        print(f"done in {timings[nb.name]:.1f} s", flush=True)

    def machine() -> dict:
        with _stderr_to(runs_path / "kernels.log"):  # importing TensorFlow prints its start-up lines
            return machine_info()

    manifest = {
        "profile": asdict(prof),
        "seed": prof.seed,
        "data": data_label(data_dir),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": {k: round(v, 1) for k, v in timings.items()},
        "total_wall_time_s": round(time.perf_counter() - started, 1),
        "git_commit": git_commit(root),
        "machine": machine(),
        "packages": package_versions(),
    }
    write_json(build / "manifest.json", manifest)
    for name in KEEP:
        if (reports_dir / name).exists() and not (build / name).exists():
            shutil.copy2(reports_dir / name, build / name)
    old = None
    if reports_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=".reports-old-", dir=root))
        os.replace(reports_dir, old / "reports")
    os.replace(build, reports_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    print(f"done: {reports}/ regenerated in {manifest['total_wall_time_s'] / 60:.1f} min "
          f"(figures/, tables/, notebooks/, manifest.json)")
    return 0


def make_nbval_refs(dest: str, root: Path | None = None) -> int:
    """Execute every notebook under the smoke profile into ``dest`` (nbval's stored outputs)."""
    root = (root or Path.cwd()).resolve()
    dest_dir = root / dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ihclib-nbval-runs-") as tmp_runs:
        # models go where $IHC_RUNS_DIR says (as under `make test`), so no path is injected
        os.environ[RUNS_ENV_VAR] = tmp_runs
        for nb in notebooks(root):
            print(f"{nb.name} ...", end=" ", flush=True)
            out = dest_dir / nb.name
            seconds = _execute(nb, out, {"profile": "smoke"}, root, Path(tmp_runs) / "kernels.log")
            clean_notebook(out, root)
            print(f"{seconds:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ihclib.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", help="smoke, quick (default) or paper")
    parser.add_argument("--data-dir", default=None, help="folder of images, or 'skimage' for the embedded image "
                        "(default: $IHC_DATA_DIR, else the project's data/, else the embedded image)")
    parser.add_argument("--reports", default="reports", help="output folder (replaced only on success)")
    parser.add_argument("--runs", default=None, help="where trained models are kept (default: runs/)")
    parser.add_argument("--only", nargs="*", help="run only notebooks whose name starts with these prefixes")
    parser.add_argument("--nbval-refs", metavar="DIR", help="write smoke-profile reference notebooks for nbval")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the kernels inherit it: no TF C++ log lines
    if args.nbval_refs:
        return make_nbval_refs(args.nbval_refs)
    data_dir = args.data_dir or os.environ.get("IHC_DATA_DIR") or None
    return run_study(args.profile, data_dir, args.reports, args.runs, only=args.only)


if __name__ == "__main__":
    sys.exit(main())
