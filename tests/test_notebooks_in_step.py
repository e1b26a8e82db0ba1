"""The notebooks' shape, committed clean, and nbval's stored outputs (tests/notebooks/) in step.

After changing a notebook, `make nbval-refs` regenerates the stored outputs (tests/notebooks/README.md).
"""

import ast
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from ihclib.runner.lab import KERNELSPEC, pre_save_hook, source_notebooks, unclean

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHECKED = {"01": "tiles per split", "03": "total params", "04": "history columns"}
# the parameters each notebook uses (03 reads no data and 01-03 train nothing)
PARAMETERS = {"01": {"profile", "data_dir", "reports_dir"}, "02": {"profile", "data_dir", "reports_dir"},
              "03": {"profile", "reports_dir"}, "04": {"profile", "data_dir", "reports_dir", "runs_dir"},
              "05": {"profile", "data_dir", "reports_dir", "runs_dir"}}


def _code(nb):
    return [c.source for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]


def test_five_numbered_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shape(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown"
    first = nb.cells[0].source
    assert "What the paper did" in first and "What we do" in first and "What to look at" in first
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    for name in PARAMETERS[path.name[:2]]:
        assert f"{name} = " in params[0].source


def test_source_notebooks_are_clean():
    """No outputs, execution counts or machine-specific metadata (language_info): what
    `python -m ihclib.runner.lab strip` (and the save hook of `make lab`) leaves."""
    assert [p.name for p in unclean(source_notebooks(ROOT))] == [], "run `python -m ihclib.runner.lab strip`"
    for path in NOTEBOOKS:
        assert json.loads(path.read_text())["metadata"] == {"kernelspec": KERNELSPEC}


def _names(nb) -> tuple[dict[str, str], set[str], set[str]]:
    """(imported name -> cell kind, parameter names, names read anywhere) of a notebook's code."""
    imported, params, read = {}, set(), set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    imported[(alias.asname or alias.name).split(".")[0]] = "import"
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                read.add(node.id)
            elif isinstance(node, ast.Name) and "parameters" in cell.metadata.get("tags", []):
                params.add(node.id)
    return imported, params, read


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_unused_imports_or_parameters(path):
    imported, params, read = _names(nbformat.read(path, as_version=4))
    assert sorted(set(imported) - read) == [], "imported but never used"
    assert sorted(params - read) == [], "parameter never used"


def test_save_in_lab_leaves_source_notebook_unchanged(tmp_path):
    """What JupyterLab's Save (and autosave) does after Run All, through Jupyter's own contents
    manager with `make lab`'s hook: the file stays byte for byte as committed. Without the hook the
    outputs and language_info would be written (the control)."""
    from jupyter_server.services.contents.filemanager import FileContentsManager

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "ihclib").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "reports" / "notebooks").mkdir(parents=True)
    for rel in ("notebooks/02.ipynb", "reports/notebooks/02.ipynb"):
        shutil.copy(NOTEBOOKS[1], tmp_path / rel)
    committed = NOTEBOOKS[1].read_text()
    for hook, rel, unchanged in ((pre_save_hook, "notebooks/02.ipynb", True), (None, "notebooks/02.ipynb", False),
                                 (pre_save_hook, "reports/notebooks/02.ipynb", False)):
        cm = FileContentsManager(root_dir=str(tmp_path))
        if hook is not None:
            cm.register_pre_save_hook(hook)
        model = cm.get(rel)
        nb = model["content"] = json.loads(json.dumps(model["content"]))  # as the browser sends it
        nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.2"}
        nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
            cell.update(execution_count=i + 1, outputs=[{"output_type": "stream", "name": "stdout", "text": "x\n"}])
            cell["metadata"]["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00Z"}
        cm.save(model, rel)
        assert ((tmp_path / rel).read_text() == committed) == unchanged, (hook, rel)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_nbval_reference_in_step(path):
    ref = ROOT / "tests" / "notebooks" / path.name
    assert ref.exists(), "run `make nbval-refs`"
    assert _code(nbformat.read(ref, as_version=4)) == _code(nbformat.read(path, as_version=4)), \
        "tests/notebooks is out of date: run `make nbval-refs`"


@pytest.mark.parametrize("prefix,text", CHECKED.items())
def test_key_outputs_are_checked_by_nbval(prefix, text):
    ref = next((ROOT / "tests" / "notebooks").glob(f"{prefix}_*.ipynb"))
    nb = nbformat.read(ref, as_version=4)
    checked = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("# NBVAL_CHECK_OUTPUT")]
    outputs = "".join(o.get("text", "") for c in checked for o in c.outputs)
    assert text in outputs


def test_strip_command_checks_and_fixes(tmp_path, capsys):
    from ihclib.runner.lab import main

    dirty = tmp_path / "02.ipynb"
    nb = json.loads(NOTEBOOKS[1].read_text())
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.2"}
    nb["cells"][2]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x\n"}]
    dirty.write_text(json.dumps(nb))
    assert main(["strip", "--check", str(dirty)]) == 1 and "02.ipynb" in capsys.readouterr().err
    assert main(["strip", str(dirty)]) == 0
    assert main(["strip", "--check", str(dirty)]) == 0
    assert dirty.read_text() == NOTEBOOKS[1].read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_nbval_reference_is_small_and_labelled(path):
    """Only the outputs nbval --nbval-lax compares, no machine metadata, marked as generated."""
    ref = nbformat.read(ROOT / "tests" / "notebooks" / path.name, as_version=4)
    assert set(ref.metadata) == {"kernelspec", "ihclib"} and "make nbval-refs" in ref.metadata.ihclib.generated
    for cell in ref.cells:
        if cell.cell_type == "code" and cell.outputs:
            assert cell.source.startswith("# NBVAL_CHECK_OUTPUT")
