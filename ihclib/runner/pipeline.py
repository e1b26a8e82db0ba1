"""Run the whole study: execute the numbered notebooks in order with papermill -> ``reports/``.

``python -m ihclib.runner.pipeline --profile quick`` (what ``make reproduce`` runs):

* runs the notebooks of the checkout it belongs to (``notebooks/`` beside ``ihclib/``), from
  whatever folder it is started in, and refuses to run without them;
* builds everything in a temporary folder beside ``reports/`` (``.reports-build-*``, ignored by
  git) and swaps it into place only when every notebook has succeeded, so a failure or an
  interruption (Ctrl-C, SIGTERM) leaves the previous ``reports/`` as it was and no build folder;
* never deletes a file in ``reports/`` that it did not write: the manifest lists the files the
  pipeline wrote, and any other file is carried over into the new ``reports/``;
* keeps a failing executed notebook in ``runs/failed/`` and prints its error (the kernels'
  own stderr, TensorFlow's start-up lines, goes to ``runs/kernels.log``);
* refuses to run from a checkout with uncommitted changes unless ``--allow-dirty`` is given
  (the manifest records both);
* writes ``reports/manifest.json``: profile, seed, data, package versions, git commit, CPU/GPU,
  the tolerances the results are held to on another CPU (``ihclib.runner.verify``) and the timings
  (wall time of each notebook, training and inference times), which the result tables leave out.

``--nbval-refs DIR`` instead executes every notebook under the smoke profile into ``DIR``: the
stored outputs that ``make test`` (nbval) compares against.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from ihclib.study.data import data_label
from ihclib.runner.lab import keep_checked_outputs
from ihclib.study.reports import RUNS_ENV_VAR, clean_notebook, git_commit, machine_info, package_versions, runs_dir, write_json
from ihclib.runner.verify import reproducibility_statement

# the checkout this module belongs to: its notebooks/ are the study, wherever it is run from
REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = "manifest.json"


def notebooks(root: Path = REPO_ROOT) -> list[Path]:
    """The numbered notebooks under ``root/notebooks``, in order."""
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
    """Execute one notebook with those of ``params`` that its parameters cell declares (an
    executed copy carries no injected setting it never reads); returns the wall time."""
    import papermill as pm

    declared = pm.inspect_notebook(str(nb))
    params = {k: v for k, v in params.items() if k in declared}
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


def _files(folder: Path) -> set[str]:
    """Paths (relative, with /) of every file under ``folder``."""
    if not folder.is_dir():
        return set()
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _written_by_pipeline(reports_dir: Path, new: set[str]) -> set[str]:
    """The files in ``reports_dir`` that an earlier run of the pipeline wrote.

    Its manifest lists them. A manifest of an older ihclib, which did not, vouches only for the
    files this run writes again; without a manifest the folder is not the pipeline's at all.
    """
    try:
        manifest = json.loads((reports_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    files = manifest.get("files") if isinstance(manifest, dict) else None
    old = _files(reports_dir)
    if isinstance(files, list):
        return old & ({str(f) for f in files} | {MANIFEST})
    return old & (new | {MANIFEST})


def _free_name(rel: str, taken: set[str]) -> str:
    """``dir/name.user.ext`` (then ``.user-2`` ...) for a user's file whose name the study now writes."""
    path = Path(rel)
    for i in range(1, 10_000):
        tag = "user" if i == 1 else f"user-{i}"
        cand = path.with_name(f"{path.stem}.{tag}{path.suffix}").as_posix()
        if cand not in taken:
            return cand
    raise RuntimeError(f"no free name for {rel}")


def _swap_in(build: Path, reports_dir: Path) -> None:
    """Put ``build`` where ``reports_dir`` is, the old folder restored if this is interrupted."""
    old_parent = Path(tempfile.mkdtemp(prefix=".reports-old-", dir=reports_dir.parent))
    old = old_parent / "reports"
    try:
        if reports_dir.exists():
            os.replace(reports_dir, old)
        os.replace(build, reports_dir)
    except BaseException:
        if not reports_dir.exists() and old.exists():
            os.replace(old, reports_dir)
        if not old.exists():  # never delete the old reports/ unless it is back in place
            shutil.rmtree(old_parent, ignore_errors=True)
        raise
    shutil.rmtree(old_parent, ignore_errors=True)


def run_study(profile: str = "quick", data_dir: str | None = None, reports: str = "reports",
              runs: str | None = None, root: Path | None = None, only: list[str] | None = None,
              allow_dirty: bool = False) -> int:
    """Execute every notebook into a fresh copy of ``reports`` and swap it into place.

    Parameters
    ----------
    profile, data_dir : the run size (``ihclib.study.profiles``) and the images (None: the profile's).
    reports, runs : output folder and trained models' folder, relative to ``root``.
    root : holds ``notebooks/`` (default: the source checkout this package belongs to).
    only : run only the notebooks whose names start with these prefixes.
    allow_dirty : write reports from a tree with uncommitted changes (refused otherwise: the
        manifest's commit would not say what made them); the manifest records it.

    Returns
    -------
    int : 0 on success, 1 if a notebook failed, 2 if nothing ran.

    Files in ``reports`` that the pipeline did not write (its manifest lists what it wrote) are
    carried over; one whose name the study now writes is kept as ``NAME.user.EXT``. Nothing is
    left behind when the run fails or is interrupted.
    """
    from ihclib.study.profiles import get_profile

    root = (root or REPO_ROOT).resolve()
    prof = get_profile(profile)  # fail early on an unknown profile
    book = _chosen_notebooks(root, only)
    commit = git_commit(root)
    if book is None or not _commit_allowed(commit, allow_dirty, reports):
        return 2
    reports_dir = (root / reports).resolve()
    run = _Run(prof, data_dir, reports, reports_dir, runs_dir(runs if runs is not None else root / "runs"), root,
               bool(only), commit, allow_dirty)
    reports_dir.parent.mkdir(parents=True, exist_ok=True)
    # beside reports/ (os.replace needs the same file system), named as .gitignore expects
    build = Path(tempfile.mkdtemp(prefix=".reports-build-", dir=reports_dir.parent))
    try:
        return _run_into(build, book, run)
    finally:
        shutil.rmtree(build, ignore_errors=True)  # gone already when it became reports/


@dataclass(frozen=True)
class _Run:
    """What one pipeline run was asked to do, and from which commit."""

    prof: object  # Profile
    data_dir: str | None
    reports: str
    reports_dir: Path
    runs_path: Path
    root: Path
    partial: bool
    commit: str
    allow_dirty: bool


def _chosen_notebooks(root: Path, only: list[str] | None) -> list[Path] | None:
    """The notebooks to run, or None (after saying why) when there are none."""
    book = notebooks(root)
    if not book:
        print(f"error: no notebooks in {root / 'notebooks'}; the study runs from a source checkout of "
              "ihc-denoise (nothing was changed)", file=sys.stderr)
        return None
    if only:
        book = [nb for nb in book if any(nb.name.startswith(o) for o in only)]
        if not book:
            print(f"error: no notebook in {root / 'notebooks'} starts with {' or '.join(only)} "
                  "(nothing was changed)", file=sys.stderr)
            return None
    return book


def _commit_allowed(commit: str, allow_dirty: bool, reports: str) -> bool:
    """Reports come from a clean commit (issue 12): a ``+dirty`` tree only with ``--allow-dirty``."""
    if commit.endswith("+dirty") and not allow_dirty:
        print(f"error: the checkout has uncommitted changes ({commit}); commit them first, so that the "
              f"manifest names the code that made {reports}/, or pass --allow-dirty (recorded in the "
              "manifest); nothing was changed", file=sys.stderr)
        return False
    return True


def _run_into(build: Path, book: list[Path], run: _Run) -> int:
    """Execute ``book`` into ``build``, carry over the files that are not the pipeline's, swap."""
    started = time.perf_counter()
    timings = _execute_all(build, book, run)
    if timings is None:
        return 1
    new = _files(build)
    moves, carried_ours = _carry_over(new, run)
    manifest = _manifest(run, timings, time.perf_counter() - started, sorted(new | carried_ours | {MANIFEST}),
                         build)
    write_json(build / MANIFEST, manifest)
    for rel, dest in moves:  # copies: the old folder stays whole until the swap
        target = build / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run.reports_dir / rel, target, follow_symlinks=False)
    _swap_in(build, run.reports_dir)
    print(f"done: {run.reports}/ regenerated in {manifest['total_wall_time_s'] / 60:.1f} min "
          f"(figures/, tables/, notebooks/, manifest.json)")
    return 0


def _execute_all(build: Path, book: list[Path], run: _Run) -> dict[str, float] | None:
    """Run the notebooks in order into ``build/notebooks``; their wall times, or None when one failed."""
    (build / "notebooks").mkdir(exist_ok=True)
    rel_build = os.path.relpath(build, run.root)
    timings: dict[str, float] = {}
    print(f"ihc-denoise study: profile {run.prof.name}, data {data_label(run.data_dir)}, {len(book)} notebooks")
    for i, nb in enumerate(book, 1):
        out = build / "notebooks" / nb.name
        print(f"[{i}/{len(book)}] {nb.name} ...", end=" ", flush=True)
        params = {"profile": run.prof.name, "data_dir": run.data_dir, "reports_dir": rel_build,
                  "runs_dir": os.path.relpath(run.runs_path, run.root)}
        try:
            timings[nb.name] = _execute(nb, out, params, run.root, run.runs_path / "kernels.log")
        except Exception as exc:  # papermill raises its own error types plus kernel failures
            _report_failure(nb, out, exc, run, rel_build)
            return None
        clean_notebook(out, run.root, {rel_build: run.reports})
        print(f"done in {timings[nb.name]:.1f} s", flush=True)
    return timings


def _report_failure(nb: Path, out: Path, exc: Exception, run: _Run, rel_build: str) -> None:
    """Keep the failing executed notebook in ``runs/failed/`` and print its error."""
    failed = run.runs_path / "failed"
    failed.mkdir(parents=True, exist_ok=True)
    kept = failed / nb.name
    if out.exists():
        shutil.copy(out, kept)
        clean_notebook(kept, run.root, {rel_build: run.reports})
        reason = _error_of(kept)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    print("FAILED")
    print(f"error in {nb.name}: {reason}", file=sys.stderr)
    if out.exists():
        print(f"the executed notebook is kept for inspection: {os.path.relpath(kept, run.root)}", file=sys.stderr)
    print(f"{run.reports} was left as it was.", file=sys.stderr)


def _carry_over(new: set[str], run: _Run) -> tuple[list[tuple[str, str]], set[str]]:
    """(source, destination) of the files in ``reports/`` to copy into the new folder (the user's,
    renamed when the study now writes that name; a partial run's other outputs), and the latter."""
    ours = _written_by_pipeline(run.reports_dir, new)
    old = _files(run.reports_dir)
    carried_ours = (ours - new) if run.partial else set()  # a partial run keeps the other notebooks' outputs
    users = sorted(old - ours)
    taken = new | carried_ours | set(users) | {MANIFEST}
    moves: list[tuple[str, str]] = []
    for rel in users:
        dest = rel
        if rel in new or rel == MANIFEST:
            dest = _free_name(rel, taken)
            taken.add(dest)
            print(f"kept your {run.reports}/{rel} as {run.reports}/{dest} (the study writes {rel})")
        moves.append((rel, dest))
    return moves + [(rel, rel) for rel in sorted(carried_ours)], carried_ours


def _manifest(run: _Run, timings: dict[str, float], total_s: float, files: list[str], build: Path) -> dict:
    """What made these reports: profile, data, commit (and whether it was dirty), machine (CPU
    model and signature: the key of byte-identical results), versions, the tolerances results
    are held to on another CPU, and the timings, which are kept out of the result tables."""
    with _stderr_to(run.runs_path / "kernels.log"):  # importing TensorFlow prints its start-up lines
        machine = machine_info()
    return {
        "profile": asdict(run.prof),
        "seed": run.prof.seed,
        "data": data_label(run.data_dir),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": run.commit,
        "dirty": run.commit.endswith("+dirty"),
        "allow_dirty": run.allow_dirty,
        "machine": machine,
        "packages": package_versions(),
        "reproducibility": reproducibility_statement(),
        "wall_time_s": {k: round(v, 1) for k, v in timings.items()},
        "total_wall_time_s": round(total_s, 1),
        "timings": _timing_rows(build),
        # what the pipeline wrote: the next run replaces these and carries over anything else
        "files": files,
    }


def _timing_rows(build: Path) -> list[dict]:
    """``tables/timings.csv`` (training and inference times per model) as JSON rows, if written."""
    path = build / "tables" / "timings.csv"
    if not path.exists():
        return []
    import pandas as pd

    return json.loads(pd.read_csv(path).to_json(orient="records"))


def make_nbval_refs(dest: str, root: Path | None = None) -> int:
    """Execute every notebook under the smoke profile into ``dest`` (nbval's stored outputs)."""
    root = (root or REPO_ROOT).resolve()
    if not notebooks(root):
        print(f"error: no notebooks in {root / 'notebooks'} (nothing was changed)", file=sys.stderr)
        return 2
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
            keep_checked_outputs(out)  # only what nbval --nbval-lax compares (ihclib.runner.lab)
            print(f"{seconds:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ihclib.runner.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", help="smoke, quick (default), long, wide, s2d, bundle or paper (ihclib.study.profiles)")
    parser.add_argument("--data-dir", default=None, help="folder of images, or 'skimage' for the embedded image "
                        "(default: $IHC_DATA_DIR, else the project's data/, else the embedded image)")
    parser.add_argument("--reports", default="reports", help="output folder (replaced only on success)")
    parser.add_argument("--runs", default=None, help="where trained models are kept (default: runs/)")
    parser.add_argument("--only", nargs="*", help="run only notebooks whose name starts with these prefixes")
    parser.add_argument("--nbval-refs", metavar="DIR", help="write smoke-profile reference notebooks for nbval")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="write reports although the checkout has uncommitted changes (the manifest says so)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the kernels inherit it: no TF C++ log lines
    from ihclib.cli import sigterm_raises

    try:
        with sigterm_raises():  # SIGTERM unwinds like Ctrl-C: the build folder is removed
            if args.nbval_refs:
                return make_nbval_refs(_from_cwd(args.nbval_refs))
            data_dir = _from_cwd(args.data_dir or os.environ.get("IHC_DATA_DIR") or None)
            return run_study(args.profile, data_dir, _from_cwd(args.reports), _from_cwd(args.runs), only=args.only,
                             allow_dirty=args.allow_dirty)
    except KeyboardInterrupt:
        print("\npipeline: interrupted; reports/ was left as it was", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if exc.code == 143:
            print("\npipeline: terminated; reports/ was left as it was", file=sys.stderr)
        raise


def _from_cwd(path: str | None) -> str | None:
    """A path given on the command line, made absolute when the user is not in the checkout
    (the notebooks run with the checkout as their folder); unchanged there, so that the
    manifest of `make reproduce` does not record this machine's folders."""
    if path is None or Path(path).is_absolute() or Path.cwd().resolve() == REPO_ROOT:
        return path
    return str(Path(path).resolve())


if __name__ == "__main__":
    sys.exit(main())
