"""The notebooks' shape, and nbval's stored outputs (tests/notebooks/) in step with them.

After changing a notebook, `make nbval-refs` regenerates the stored outputs.
"""

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHECKED = {"01": "tiles per split", "03": "total params", "04": "history columns"}


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
    for name in ("profile", "data_dir", "reports_dir", "runs_dir"):
        assert f"{name} = " in params[0].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"


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
