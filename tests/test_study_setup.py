"""ihclib.study.setup: the notebooks' one setup call (issue 15: quiet, paths from the repository root)."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ihclib.study.setup import find_root, setup, study_dirs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkout(tmp_path):
    """A folder shaped like the repository, with an executed notebook's folder in it."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "reports" / "notebooks").mkdir(parents=True)
    return tmp_path


def test_root_found_from_a_subfolder(checkout):
    assert find_root(checkout / "reports" / "notebooks") == checkout.resolve()
    assert find_root(checkout) == checkout.resolve()


def test_executed_notebook_reruns_where_it_is(checkout, monkeypatch):
    """papermill injects reports_dir="reports", runs_dir="runs" (relative to the root); JupyterLab
    runs the kernel in reports/notebooks/: the paths must still mean the root's folders."""
    monkeypatch.chdir(checkout / "reports" / "notebooks")
    monkeypatch.delenv("IHC_RUNS_DIR", raising=False)
    dirs = study_dirs("data", "reports", "runs")
    root = checkout.resolve()
    assert (dirs.root, dirs.reports, dirs.figures, dirs.runs) == (root, root / "reports", root / "reports" / "figures",
                                                                  root / "runs")
    assert dirs.data == str(root / "data")
    assert not (checkout / "reports" / "notebooks" / "reports").exists()
    assert not (checkout / "reports" / "notebooks" / "runs").exists()


def test_paths_kept_as_given_at_the_root(checkout, monkeypatch, tmp_path_factory):
    """At the root (papermill's cwd) relative paths stay relative: the manifest and executed
    notebooks record no machine paths; absolute paths and "skimage" are never changed."""
    monkeypatch.chdir(checkout)
    other = tmp_path_factory.mktemp("elsewhere")
    dirs = study_dirs("skimage", "reports", other / "runs")
    assert dirs.reports == Path("reports") and dirs.figures.is_dir()
    assert dirs.runs == other / "runs" and dirs.data == "skimage"


def test_runs_dir_from_environment_taken_from_root(checkout, monkeypatch):
    monkeypatch.chdir(checkout / "notebooks")
    monkeypatch.setenv("IHC_RUNS_DIR", "scratch/runs")
    assert study_dirs().runs == checkout.resolve() / "scratch" / "runs"


def test_profile_from_environment(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("IHC_PROFILE", "smoke")
    P, ds, dirs = setup(reports_dir=tmp_path / "reports", runs_dir=tmp_path / "runs", dataset=False)
    assert P.name == "smoke" and ds is None and dirs.tables == tmp_path / "reports" / "tables"
    assert capsys.readouterr().out.startswith("profile smoke:")
    P, _, _ = setup("quick", reports_dir=tmp_path / "reports", runs_dir=tmp_path / "runs", dataset=False)
    assert P.name == "quick"  # an explicit profile wins


def test_quiet_and_no_temporary_folder(tmp_path):
    """In a fresh process without TF_CPP_MIN_LOG_LEVEL (a kernel JupyterLab starts): importing
    study_setup, then TensorFlow, running an op and setting up a notebook write nothing to
    stderr, and an interactive run's reports go to <runs>/reports, not to a temporary folder."""
    code = ("from ihclib.study.setup import setup\n"
            "import tensorflow as tf\n"
            "tf.constant([1.0]) + 1\n"
            "P, ds, dirs = setup('smoke', dataset=False)\n"
            "print(dirs.reports)\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    (tmp_path / "tmp").mkdir()
    env.update(PYTHONPATH=str(ROOT), IHC_RUNS_DIR=str(tmp_path / "runs"), TMPDIR=str(tmp_path / "tmp"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert Path(proc.stdout.strip().splitlines()[-1]) == tmp_path / "runs" / "reports"
    assert not [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("ihclib-reports-")]


@pytest.mark.slow
def test_executed_notebook_reruns_in_its_folder_end_to_end(checkout, monkeypatch):
    """Notebook 03 as `make reproduce` leaves it (reports_dir="reports" injected), run again by a
    kernel started in reports/notebooks/ (as JupyterLab does): it writes to the root's reports/."""
    import nbformat
    import papermill as pm

    executed = checkout / "reports" / "notebooks" / "03.ipynb"
    shutil.copy(ROOT / "notebooks" / "03_architecture_summary.ipynb", executed)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pm.execute_notebook(str(executed), str(executed), parameters={"profile": "smoke", "reports_dir": "reports"},
                        kernel_name="python3", cwd=str(executed.parent), progress_bar=False)
    assert (checkout / "reports" / "figures" / "fig4_architecture.png").is_file()
    assert (checkout / "reports" / "tables" / "architecture_cost.csv").is_file()
    assert not (checkout / "reports" / "notebooks" / "reports").exists()
    assert nbformat.read(executed, as_version=4).cells[-1].outputs  # it ran to the end


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("bm3d") is not None, reason="bm3d is installed here")
def test_bm3d_opt_in_says_what_is_missing(tmp_path, monkeypatch):
    """Notebook 05's `bm3d = True` without the package stops at once with what to install,
    rather than silently leaving BM3D out."""
    import papermill as pm

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("IHC_RUNS_DIR", str(tmp_path / "runs"))
    with pytest.raises(pm.PapermillExecutionError, match="pip install bm3d"):
        pm.execute_notebook(str(ROOT / "notebooks" / "05_comparative_results.ipynb"), str(tmp_path / "05.ipynb"),
                            parameters={"profile": "smoke", "bm3d": True}, kernel_name="python3", cwd=str(ROOT),
                            progress_bar=False)


def test_study_notebooks_run_tensorflow_one_op_at_a_time():
    # the evaluation ran on TensorFlow's default threads (two ops at once): a rerun once differed
    # in the last bits of one model's scores; the setup of every notebook now pins the threads
    code = ("import ihclib.study.setup, tensorflow as tf; t = tf.config.threading; "
            "print(t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-2:] == ["2", "1"]
