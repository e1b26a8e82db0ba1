#!/usr/bin/env python
"""Trained models (or untrained designs) through ``ihclib denoise``, held to issue 13's targets.

``make bench`` times untrained designs; this times the models a profile trained (or any
``.keras`` file), on the same 4096 px test image, in the same way (:func:`bench.bench_denoise_cli`:
a first run with empty caches, then the best of three), beside the bf16 GEMM peak and the
switching median measured in the same run, so that each row's share of the peak and its
4x-the-median limit come from one run. Used for README "Width at each resolution"::

    .venv/bin/python benchmarks/designs.py runs/long/crosschannel_unet/crosschannel_unet.keras \\
        runs/full32/crosschannel_unet/crosschannel_unet.keras --out reports/design_timings.json
    .venv/bin/python benchmarks/designs.py crosschannel_unet:32:32,64     # untrained: width, lower widths

A model given as ``NAME:WIDTH[:HALF,QUARTER]`` is built untrained (the time does not depend on
the weights); a file is timed as it is. The test image is made as ``make bench`` makes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench  # noqa: E402  (the benchmark's own helpers)


# what tests run: seconds, not minutes (bench's own tests use the same sizes)
QUICK = replace(bench.QUICK, name="tiny", gemm_sizes=(64, 128), tile_size=32, denoise_size=192,
                      denoise_overlap=8)


def model_file(spec: str, work: Path) -> tuple[str, Path]:
    """(label, path of a .keras file with its sidecar) for a file or a ``NAME:WIDTH[:H,Q]`` spec."""
    from ihclib.model import build_model, save_model
    from ihclib.registry import INPUT_MULTIPLE

    if spec.endswith(".keras"):
        path = Path(spec)
        if not path.is_file():
            raise SystemExit(f"designs.py: {spec}: no such model file")
        resolved = path.resolve()  # named from the repository's root where it is inside it
        return str(resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else path.name), path
    name, width, *lower = spec.split(":")
    lower_widths = tuple(int(w) for w in lower[0].split(",")) if lower else None
    model = build_model(name, None, int(width), lower_widths)
    path = work / f"{spec.replace(':', '_').replace(',', '_')}.keras"
    save_model(model, path, {"architecture": name, "input_multiple": INPUT_MULTIPLE[name],
                             "description": f"untrained {spec}: for timing only"})
    return f"untrained {spec}", path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help=".keras files, or NAME:WIDTH[:HALF,QUARTER] for untrained designs")
    p.add_argument("--out", help="JSON of the run (default: print only)")
    p.add_argument("--quick", action="store_true", help="a 192 px image and small GEMMs (tests; numbers meaningless)")
    args = p.parse_args(argv)
    from ihclib.cli import import_tensorflow_quietly

    import_tensorflow_quietly()
    from ihclib.images import load_image
    from ihclib.infer import load_model, resolve_precision
    from ihclib.model import count_flops
    from ihclib.study.reports import git_commit

    cfg = QUICK if args.quick else bench.FULL
    cpu = bench.cpu_info()
    result: dict = {"commit": git_commit(ROOT), "cpu": cpu, "load_average_before": bench.load_average()}
    with tempfile.TemporaryDirectory(prefix="ihclib-designs-") as tmp:
        work = Path(tmp)
        src = bench.write_test_image(work / "noisy.png", bench.make_test_image(cfg.denoise_size))
        peak = bench.measure_peak(cfg.gemm_sizes, cfg.gemm_repeats, bench.theoretical_peak(cpu).get("gflops") or 0,
                                  bf16=True)
        median = bench.bench_switching_median(load_image(str(src)).rgb, src)
        limit = bench.MEDIAN_FACTOR * median["seconds"]
        result.update(peak={k: peak[k] for k in ("peak_gflops", "bf16_peak_gflops", "peak_source")},
                      switching_median=median, max_seconds=round(limit, 4), rows=[])
        print(f"bf16 peak {peak['bf16_peak_gflops']} GFLOP/s; switching median {median['seconds']} s, "
              f"so at most {limit:.2f} s", flush=True)
        print("| model | FLOP per pixel | seconds (runs; first) | MP/s | share of the peak | all targets |")
        print("| --- | --- | --- | --- | --- | --- |")
        for spec in args.models:
            label, path = model_file(spec, work)
            model, sidecar = load_model(path)
            per_px = count_flops(model, cfg.tile_size) / cfg.tile_size**2
            run = bench.bench_denoise_cli(path, src, work, cfg, int(sidecar.get("input_multiple", 4)))
            r = bench.rates(run["mp_per_s"] * 1e6, per_px, bench.peak_for(resolve_precision(model, "auto"), peak))
            meets = bench.meets_speed(run, limit) and r["pct_peak"] >= 60
            row = {"model": label, "flops_per_pixel": per_px, "seconds": run["seconds"],
                   "seconds_runs": run["seconds_runs"], "seconds_cold": run["seconds_cold"],
                   "mp_per_s": run["mp_per_s"], "gflops": r["gflops"], "pct_peak": r["pct_peak"],
                   "peak_rss_mib": run["peak_rss_mib"], "meets_all": meets, "load_1min": run["load_1min"]}
            result["rows"].append(row)
            runs = " / ".join(str(s) for s in run["seconds_runs"])
            print(f"| {label} | {per_px:,.0f} | {run['seconds']} ({runs}; {run['seconds_cold']}) | {run['mp_per_s']} "
                  f"| {r['pct_peak']} % | {'yes' if meets else 'no'} |", flush=True)
    result["load_average_after"] = bench.load_average()
    if args.out:  # through a temporary file: a run cut short leaves the last JSON as it was
        from ihclib.images import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
