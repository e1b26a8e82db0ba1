"""Slides on Dask (ihclib.distributed): a LocalCluster of 2 workers, a worker that dies, and a
`dask scheduler` / `dask worker` pair started here as separate processes on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from helpers import keras_model
from ihclib import slides
from ihclib.cli import main
from ihclib.distributed import dask_client, ordered_map
from test_slides import MPP, job, synthetic_slide, write_pyramid_tiff

distributed = pytest.importorskip("distributed")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask")
    img = synthetic_slide(700, 1100, seed=5)
    write_pyramid_tiff(folder / "slide.tif", img)
    model = keras_model(folder / "half.keras", weight=0.5)
    reference = folder / "reference.ome.tif"  # the same job in this process, no Dask
    slides.denoise_slide(job(folder / "slide.tif", model), reference, progress=False)
    return folder, model, tifffile.imread(reference)


def test_local_cluster_of_two_workers_gives_the_in_process_result(tmp_path, case):
    folder, model, reference = case
    with dask_client(workers=2, processes=False) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        report = slides.denoise_slide(job(folder / "slide.tif", model), tmp_path / "o.ome.tif", client, progress=False)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.ome.tif"), reference)
    assert (report.blocks, report.skipped) == (6, 4)


def die_once(marker: str, i: int) -> int:
    """Kills its worker process the first time it runs for i == 3 (a crashed or pre-empted node)."""
    if i == 3 and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return i * i


def test_a_dead_workers_tasks_run_again_and_results_stay_in_order(tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # worker processes cannot import tests/
    marker = str(tmp_path / "died")
    rows = [[(marker, r * 3 + c) for c in range(3)] for r in range(4)]
    with dask_client(workers=2, processes=True) as client:
        got = list(ordered_map(client, die_once, rows, ahead=1))
    assert os.path.exists(marker)  # a worker did die
    assert got == [[(r * 3 + c) ** 2 for c in range(3)] for r in range(4)]


def _wait_for(path: Path, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"{what} did not start: {proc.communicate(timeout=5)}")
        time.sleep(0.2)


def test_scheduler_and_worker_processes_on_localhost(tmp_path, case, capsys):
    folder, model, reference = case
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    dask = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(sched_file)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)]
    try:
        _wait_for(sched_file, procs[0], "dask scheduler")
        import json

        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        procs.append(subprocess.Popen([*dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                                       "--host", "127.0.0.1"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        args = ["denoise", str(folder / "slide.tif"), "-o", str(tmp_path / "o.ome.tif"), "--scheduler", address,
                "--model", model, "--tile-size", "128", "--overlap", "32", "--batch-size", "4", "--block-size", "512"]
        assert main(args) == 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.ome.tif"), reference)
    assert "per worker at most" in capsys.readouterr().out
    assert slides.open_slide(tmp_path / "o.ome.tif").meta.microns_per_pixel() == pytest.approx((MPP, MPP))


def test_unreachable_scheduler_is_one_line(tmp_path, case, capsys):
    folder, model, _ = case
    args = ["denoise", str(folder / "slide.tif"), "-o", str(tmp_path / "o.ome.tif"), "--scheduler",
            "tcp://127.0.0.1:9", "--model", model, "--block-size", "512"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err and "Traceback" not in err
    assert not (tmp_path / "o.ome.tif").exists()
