import json
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from ihclib.runner import pipeline
from ihclib.study.reports import clean_notebook, report_dirs, sanitize_text, save_table


def test_report_dirs_none_is_temporary(tmp_path):
    d = report_dirs(None)
    assert d.figures.is_dir() and d.tables.is_dir()
    assert not str(d.root).startswith(str(Path.cwd()))
    d2 = report_dirs(tmp_path / "rep")
    assert d2.figures == tmp_path / "rep" / "figures"


def test_save_table_writes_csv_and_markdown(tmp_path):
    d = report_dirs(tmp_path)
    save_table(pd.DataFrame({"a": [1, 2], "b": [0.5, 0.25]}), d, "t")
    assert (d.tables / "t.csv").read_text().splitlines()[0] == "a,b"
    assert "| a |" in (d.tables / "t.md").read_text().replace("   ", " ").replace("  ", " ")


def test_sanitize_text_removes_machine_paths(tmp_path):
    text = f"{tmp_path}/x.png {sys.prefix}/lib/site.py /tmp/abc/def {Path.home()}/notes"
    out = sanitize_text(text, root=tmp_path)
    assert str(tmp_path) not in out and sys.prefix not in out and str(Path.home()) + "/" not in out
    assert "./x.png" in out and "<venv>/lib/site.py" in out and "<tmp>" in out


def test_clean_notebook_strips_papermill_paths(tmp_path):
    nb = new_notebook(cells=[new_code_cell("print(1)")])
    nb.metadata["papermill"] = {"input_path": str(tmp_path / "in.ipynb"), "output_path": str(tmp_path / "o.ipynb"),
                                "parameters": {"reports_dir": "reports/.build-x"}}
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{tmp_path}/fig.png\n")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    clean_notebook(path, tmp_path, {"reports/.build-x": "reports"})
    text = path.read_text()
    assert str(tmp_path) not in text
    meta = json.loads(text)["metadata"]["papermill"]
    assert "input_path" not in meta and "output_path" not in meta
    assert meta["parameters"]["reports_dir"] == "reports"


def _project(root: Path, second_fails: bool = False) -> None:
    (root / "notebooks").mkdir(parents=True)
    for i, body in enumerate(["x = 1", "raise RuntimeError('boom in two')" if second_fails else "y = 2"], 1):
        params = new_code_cell('profile = "quick"\ndata_dir = None\nreports_dir = None\nruns_dir = None')
        params.metadata["tags"] = ["parameters"]
        work = new_code_cell(
            "from ihclib.study.reports import report_dirs\nfrom pathlib import Path\n"
            f"d = report_dirs(reports_dir)\n(d.tables / 'nb{i}.csv').write_text(profile)\n{body}")
        nb = new_notebook(cells=[params, work], metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                        "display_name": "Python 3"}})
        nbformat.write(nb, root / "notebooks" / f"0{i}_step.ipynb")


def test_run_study_builds_reports_and_manifest(tmp_path, capsys):
    _project(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "benchmarks.json").write_text("{}")
    (tmp_path / "reports" / "mine.txt").write_text("the user's")
    assert pipeline.run_study("smoke", root=tmp_path, runs=str(tmp_path / "runs")) == 0
    rep = tmp_path / "reports"
    assert (rep / "tables" / "nb1.csv").read_text() == "smoke"
    assert (rep / "notebooks" / "02_step.ipynb").exists()
    # files the pipeline did not write are carried over (issue 11, point 1)
    assert (rep / "benchmarks.json").exists() and (rep / "mine.txt").read_text() == "the user's"
    manifest = json.loads((rep / "manifest.json").read_text())
    assert "tables/nb1.csv" in manifest["files"] and "mine.txt" not in manifest["files"]
    assert set(manifest["wall_time_s"]) == {"01_step.ipynb", "02_step.ipynb"}
    assert manifest["profile"]["name"] == "smoke" and "tensorflow" in manifest["packages"]
    executed = (rep / "notebooks" / "01_step.ipynb").read_text()
    assert str(tmp_path) not in executed and ".reports-build" not in executed
    assert "[2/2] 02_step.ipynb ... done" in capsys.readouterr().out
    assert not list(tmp_path.glob(".reports-*"))


def test_run_study_failure_keeps_previous_reports(tmp_path, capsys):
    _project(tmp_path, second_fails=True)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "keep.txt").write_text("previous results")
    assert pipeline.run_study("smoke", root=tmp_path, runs=str(tmp_path / "runs")) == 1
    assert (tmp_path / "reports" / "keep.txt").read_text() == "previous results"
    assert not (tmp_path / "reports" / "tables").exists()
    kept = tmp_path / "runs" / "failed" / "02_step.ipynb"
    assert kept.exists()
    err = capsys.readouterr().err
    assert "RuntimeError: boom in two" in err and "left as it was" in err
    assert not list(tmp_path.glob(".reports-*"))


def test_unknown_profile_fails_before_running(tmp_path):
    _project(tmp_path)
    with pytest.raises(ValueError, match="unknown profile|profile"):
        pipeline.run_study("huge", root=tmp_path)


def _git(root: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=root, check=True,
                   capture_output=True)


def test_dirty_tree_is_refused_unless_allowed(tmp_path, capsys):
    # issue 12, point 7: reports only from a clean commit, or said so in the manifest
    _project(tmp_path)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "notebooks")
    _git(tmp_path, "commit", "-q", "-m", "study")
    assert pipeline.run_study("smoke", root=tmp_path, runs=str(tmp_path / "runs")) == 0
    manifest = json.loads((tmp_path / "reports" / "manifest.json").read_text())
    assert manifest["dirty"] is False and not manifest["git_commit"].endswith("+dirty")
    assert manifest["machine"]["cpu_signature"] and manifest["reproducibility"]["other_cpu"]["psnr"]["abs"] == 0.2
    before = (tmp_path / "reports" / "manifest.json").read_bytes()
    (tmp_path / "notebooks" / "01_step.ipynb").write_text((tmp_path / "notebooks" / "01_step.ipynb").read_text() + " ")
    assert pipeline.run_study("smoke", root=tmp_path, runs=str(tmp_path / "runs")) == 2
    assert "uncommitted changes" in capsys.readouterr().err
    assert (tmp_path / "reports" / "manifest.json").read_bytes() == before  # nothing was written
    with pytest.raises(ValueError, match="unknown profile"):  # the command line takes the flag
        pipeline.main(["--profile", "huge", "--allow-dirty"])
    assert pipeline.run_study("smoke", root=tmp_path, runs=str(tmp_path / "runs"), allow_dirty=True) == 0
    manifest = json.loads((tmp_path / "reports" / "manifest.json").read_text())
    assert manifest["dirty"] is True and manifest["allow_dirty"] is True and manifest["git_commit"].endswith("+dirty")


def test_executed_notebook_gets_only_the_parameters_it_declares(tmp_path):
    import nbformat

    from ihclib.runner.pipeline import _execute

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell("a = None", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(a)")]
    src, out = tmp_path / "n.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    _execute(src, out, {"a": 1, "runs_dir": "runs"}, tmp_path, tmp_path / "kernels.log")
    injected = [c.source for c in nbformat.read(out, as_version=4).cells
                if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "a = 1" in injected[0] and "runs_dir" not in injected[0]
