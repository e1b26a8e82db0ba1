"""Rerun a profile of the study and compare every result table with the committed ones.

``python -m ihclib.runner.verify --profile smoke`` (``make verify``; ``make test`` runs it too) runs the
pipeline into a temporary folder and compares its ``tables/`` with the committed ones
(``reports/smoke/`` for smoke, ``reports/`` for quick, ``reports/<profile>/`` otherwise):

* on a CPU with the committed manifest's signature (``ihclib.study.reports.cpu_info``: vendor,
  family, model, stepping and feature flags), every table must be byte-identical;
* on another CPU, oneDNN and numpy take other kernels, training drifts in the last bits and
  the results are held to :data:`TOLERANCES` instead (the same values are written into every
  manifest), cell by cell, numbers inside text cells ("51.91 [51.24, 52.59]") included.

It prints each difference it finds and the largest difference per kind of value, and writes
them to ``runs/verify/<profile>.json``. Timings are not compared: they live in
``tables/timings.csv`` and the manifest, apart from the results.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# (keyword, absolute tolerance, relative tolerance, what): the first keyword found in the
# value's metric name (a "metric" column), else its column header, else the table's name, wins
TOLERANCES: tuple[tuple[str, float, float, str], ...] = (
    ("margin", 0.4, 0.0, "dB between two PSNRs"),
    ("psnr", 0.2, 0.0, "dB"),
    ("ssim", 0.005, 0.0, ""),
    ("dice", 0.01, 0.0, ""),
    ("accuracy", 0.01, 0.0, "the paper's Keras accuracy"),
    ("dab area", 0.5, 0.0, "percentage points"),
    ("dab_fraction", 0.5, 0.0, "percentage points"),
    ("saturated", 0.5, 0.0, "percentage points"),
    ("loss", 0.0, 0.1, "MSE, relative"),
    ("mse", 0.0, 0.1, "relative"),
    ("conclusion", 0.2, 0.0, "numbers in the conclusion's text (dB)"),
)
# data, noise and stain statistics, counts, parameters, FLOPs: numpy on fixed inputs, no training
DEFAULT_TOLERANCE = ("other", 0.0, 1e-5, "relative: statistics, counts, parameters")
TABLES = "tables"
TIMING_TABLES = ("timings",)  # measured, never repeated: not compared
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+|inf|nan)", re.IGNORECASE)


def reproducibility_statement() -> dict:
    """What the results are held to, as the manifest records it."""
    return {
        "same_cpu_signature": "byte-identical result tables (same packages, any core count)",
        "other_cpu": {k: {"abs": a, "rel": r, "unit": u} for k, a, r, u in (*TOLERANCES, DEFAULT_TOLERANCE)},
        "gpu": "not verified: GPU kernels differ from the CPU's; compare with the other_cpu tolerances",
        "check": "python -m ihclib.runner.verify --profile PROFILE (make verify)",
    }


def tolerance_for(*names: str) -> tuple[str, float, float]:
    """(keyword, abs, rel) for a value named by ``names``, most specific first."""
    for name in names:
        low = (name or "").lower()
        for key, a, r, _ in TOLERANCES:
            if key in low:
                return key, a, r
    return DEFAULT_TOLERANCE[:3]


@dataclass
class Comparison:
    """What a comparison found: one line per difference, and the largest difference per kind."""

    differences: list[str] = field(default_factory=list)
    largest: dict[str, float] = field(default_factory=dict)
    files: int = 0

    @property
    def ok(self) -> bool:
        return not self.differences


def _numbers(text: str) -> tuple[list[str], list[float]]:
    parts = _NUMBER.split(text)
    return parts, [float(x) for x in _NUMBER.findall(text)]


def _close(a: float, b: float, tol_abs: float, tol_rel: float) -> bool:
    if math.isnan(a) or math.isnan(b) or math.isinf(a) or math.isinf(b):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return abs(a - b) <= tol_abs + tol_rel * max(abs(a), abs(b))


def compare_cell(ref: str, new: str, names: tuple[str, ...], where: str, out: Comparison) -> None:
    """Compare one cell: its text must match and its numbers lie within the tolerance."""
    if ref == new:
        return
    (ref_text, ref_nums), (new_text, new_nums) = _numbers(ref), _numbers(new)
    if ref_text != new_text or len(ref_nums) != len(new_nums):
        out.differences.append(f"{where}: {ref!r} -> {new!r}")
        return
    key, tol_abs, tol_rel = tolerance_for(*names)
    for a, b in zip(ref_nums, new_nums):
        if not (math.isnan(a) or math.isinf(a) or math.isnan(b) or math.isinf(b)):
            out.largest[key] = max(out.largest.get(key, 0.0), abs(a - b))
        if not _close(a, b, tol_abs, tol_rel):
            out.differences.append(f"{where}: {ref!r} -> {new!r} (tolerance for {key}: "
                                   f"{tol_abs:g} + {tol_rel:g} x value)")
            return


def compare_csv(ref: Path, new: Path, out: Comparison) -> None:
    """Cell by cell, with the tolerance of each value's metric, column or table."""
    import csv

    rows_ref = list(csv.reader(ref.open(newline="")))
    rows_new = list(csv.reader(new.open(newline="")))
    name = ref.stem
    if not rows_ref or not rows_new or rows_ref[0] != rows_new[0] or len(rows_ref) != len(rows_new):
        out.differences.append(f"{name}: columns or rows differ ({len(rows_ref)} rows, header "
                               f"{rows_ref[0] if rows_ref else []} -> {len(rows_new)} rows, "
                               f"{rows_new[0] if rows_new else []})")
        return
    header = rows_ref[0]
    metric_col = header.index("metric") if "metric" in header else None
    for i, (a, b) in enumerate(zip(rows_ref[1:], rows_new[1:]), 1):
        if len(a) != len(b):
            out.differences.append(f"{name} row {i}: {len(a)} -> {len(b)} cells")
            continue
        metric = a[metric_col] if metric_col is not None and metric_col < len(a) else ""
        for col, (x, y) in enumerate(zip(a, b)):
            compare_cell(x, y, (metric, header[col], name), f"{name} row {i} ({a[0]}) column {header[col]!r}", out)


def run_tables(folder: Path) -> set[str]:
    """Names of the result tables a pipeline run wrote to ``folder/tables``: those its manifest
    lists (other commands write there too: ``make generalisation``'s tables are no run's), else
    every file there; timings excluded."""
    manifest = folder / "manifest.json"
    listed = json.loads(manifest.read_text()).get("files") if manifest.exists() else None
    if listed is not None:
        names = {Path(f).name for f in listed if Path(f).parent.name == TABLES}
    else:
        names = {p.name for p in (folder / TABLES).glob("*") if p.is_file()}
    return {n for n in names if Path(n).stem not in TIMING_TABLES}


def compare_tables(reference: Path, new: Path, same_cpu: bool) -> Comparison:
    """Compare ``new/tables`` with ``reference/tables``: byte for byte on the same CPU, else
    the CSV tables (and text-only tables) within :data:`TOLERANCES`."""
    out = Comparison()
    ref_files, new_files = run_tables(reference), run_tables(new)
    for gone in sorted(n for n in ref_files if not (reference / TABLES / n).is_file()):
        out.differences.append(f"{gone}: in the committed manifest, but not in {reference / TABLES}")
        ref_files.discard(gone)
    for missing in sorted(ref_files - new_files):
        out.differences.append(f"{missing}: committed, not written by this run")
    for extra in sorted(new_files - ref_files):
        out.differences.append(f"{extra}: written by this run, not committed")
    for fname in sorted(ref_files & new_files):
        a, b = reference / TABLES / fname, new / TABLES / fname
        out.files += 1
        if a.read_bytes() == b.read_bytes():
            continue
        # on the same CPU any byte counts; the cell comparison still measures by how much
        found = Comparison() if same_cpu else out
        if fname.endswith(".csv"):
            compare_csv(a, b, found)
        elif not (a.with_suffix(".csv")).exists():  # a .md with a .csv is its rendering
            compare_cell(a.read_text(), b.read_text(), (a.stem,), fname, found)
        if same_cpu:
            out.differences.append(f"{fname}: not byte-identical on the same CPU; "
                                   + _first_line_diff(a.read_text(), b.read_text()))
            for key, value in found.largest.items():
                out.largest[key] = max(out.largest.get(key, 0.0), value)
    return out


def _first_line_diff(a: str, b: str) -> str:
    for i, (x, y) in enumerate(zip(a.splitlines(), b.splitlines()), 1):
        if x != y:
            return f"line {i}: {x[:160]!r} -> {y[:160]!r}"
    return f"{len(a.splitlines())} lines -> {len(b.splitlines())} lines"


def reference_dir(profile: str, root: Path) -> Path:
    """Where a profile's committed reports are (as ``make reproduce PROFILE=...`` writes them)."""
    return root / "reports" if profile == "quick" else root / "reports" / profile


def verify(profile: str, reference: Path, new: Path | None = None, root: Path | None = None,
           record: Path | None = None) -> Comparison:
    """Compare a run of ``profile`` (``new``, else a fresh run into a temporary folder) with the
    committed ``reference``; prints what it finds and records it in ``record`` (default
    ``runs/verify/<profile>.json``)."""
    from ihclib.runner.pipeline import REPO_ROOT, run_study
    from ihclib.study.reports import cpu_info, write_json

    root = root or REPO_ROOT
    committed = json.loads((reference / "manifest.json").read_text())
    here = cpu_info()
    same_cpu = committed.get("machine", {}).get("cpu_signature") == here["cpu_signature"]
    with tempfile.TemporaryDirectory(prefix="ihclib-verify-") as tmp:
        if new is None:
            new = Path(tmp) / "reports"
            # a temporary folder, not the committed reports: a dirty tree may be checked
            if run_study(profile, reports=str(new), runs=str(Path(tmp) / "runs"), root=root, allow_dirty=True):
                raise SystemExit(f"verify: the {profile} profile did not run through")
        result = compare_tables(reference, new, same_cpu)
    how = "byte-identical (same CPU signature)" if same_cpu else "within the tolerances (another CPU)"
    print(f"verify {profile}: {result.files} tables against {reference}, expected {how}: "
          f"{'OK' if result.ok else f'{len(result.differences)} differences'}")
    print(f"  committed on {committed.get('machine', {}).get('cpu')} ({committed.get('machine', {}).get('cpu_signature')}); "
          f"this CPU {here['cpu']} ({here['cpu_signature']})")
    for line in result.differences:
        print("  " + line)
    for key, value in sorted(result.largest.items()):
        print(f"  largest difference, {key}: {value:.3g}")
    write_json(record or root / "runs" / "verify" / f"{profile}.json",
               {"profile": profile, "reference": str(reference.relative_to(root)) if reference.is_relative_to(root)
                else str(reference), "committed_cpu": committed.get("machine", {}), "this_cpu": here,
                "same_cpu": same_cpu, "ok": result.ok, "differences": result.differences,
                "largest_difference": result.largest, "tolerances": reproducibility_statement()["other_cpu"]})
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m ihclib.runner.verify --profile smoke [--profile quick] [--against DIR]``."""
    from ihclib.runner.pipeline import REPO_ROOT

    p = argparse.ArgumentParser(prog="python -m ihclib.runner.verify", description=__doc__.splitlines()[0])
    p.add_argument("--profile", action="append", help="smoke (default), quick, ...; repeat for several")
    p.add_argument("--reference", help="committed reports to compare with (default: the profile's)")
    p.add_argument("--against", help="compare this finished run's folder instead of running the profile")
    p.add_argument("--record", help="write the findings here (default: runs/verify/<profile>.json)")
    a = p.parse_args(argv)
    failed = 0
    for profile in a.profile or ["smoke"]:
        reference = Path(a.reference) if a.reference else reference_dir(profile, REPO_ROOT)
        if not (reference / "manifest.json").exists():
            print(f"verify: no committed reports in {reference}", file=sys.stderr)
            return 2
        failed += not verify(profile, reference, Path(a.against) if a.against else None,
                             record=Path(a.record) if a.record else None).ok
    return 1 if failed else 0


if __name__ == "__main__":
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
