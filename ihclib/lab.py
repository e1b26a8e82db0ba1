"""The study in JupyterLab: the project's kernel, and source notebooks that stay clean when saved.

``make lab`` registers the kernel ``KERNEL_NAME`` and starts JupyterLab at the repository root with
``--ContentsManager.pre_save_hook=ihclib.lab.pre_save_hook``: every save of a notebook in the
checkout's ``notebooks/`` (autosave included) writes it without outputs, execution counts and
machine-specific metadata, so Run All + Save leaves the working tree as committed. Executed
copies (``reports/notebooks/``) are saved as they are.

``python -m ihclib.lab [--check] [NOTEBOOK ...]`` strips the source notebooks (default: all of
``notebooks/``); ``--check`` only lists those that are not clean and exits 1 (``make test`` runs
the same check as a test).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

KERNEL_NAME = "ihc-denoise"
KERNEL_DISPLAY_NAME = "Python (ihc-denoise)"
KERNELSPEC = {"display_name": KERNEL_DISPLAY_NAME, "language": "python", "name": KERNEL_NAME}
CELL_METADATA_KEPT = ("tags",)  # papermill's "parameters" tag; everything else is editor state
ROOT = Path(__file__).resolve().parents[1]


def strip_notebook(nb: dict) -> dict:
    """Strip a notebook (a dict, changed in place): no outputs, no execution counts, cell metadata
    only ``tags``, notebook metadata only the project's kernelspec (no ``language_info``)."""
    nb["metadata"] = {"kernelspec": dict(KERNELSPEC)}
    for cell in nb.get("cells", []):
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k in CELL_METADATA_KEPT}
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return nb


def stripped_text(path: str | os.PathLike) -> str:
    """The file as it is once stripped, written the way Jupyter writes notebooks."""
    import nbformat

    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    return nbformat.writes(strip_notebook(nb)) + "\n"  # nbformat.write ends the file with a newline


def source_notebooks(root: Path = ROOT) -> list[Path]:
    """The study's source notebooks (``notebooks/*.ipynb``)."""
    return sorted((root / "notebooks").glob("*.ipynb"))


def unclean(paths: list[Path]) -> list[Path]:
    """Those of ``paths`` that stripping would change."""
    return [p for p in paths if p.read_text(encoding="utf-8") != stripped_text(p)]


def _is_source_notebook(os_path: Path) -> bool:
    folder = os_path.parent
    return folder.name == "notebooks" and (folder.parent / "pyproject.toml").is_file() \
        and (folder.parent / "ihclib").is_dir()


def pre_save_hook(model: dict, path: str, contents_manager, **kwargs) -> None:
    """Jupyter server hook: strip a source notebook of the study before it is written."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    os_path = Path(contents_manager.root_dir, path.strip("/")).resolve()
    if _is_source_notebook(os_path):
        strip_notebook(model["content"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ihclib.lab", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb of this checkout")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is not clean")
    args = parser.parse_args(argv)
    paths = args.notebooks or source_notebooks()
    dirty = unclean(paths)
    for path in dirty:
        if args.check:
            print(f"{path}: has outputs or machine-specific metadata (run `python -m ihclib.lab`)", file=sys.stderr)
        else:
            path.write_text(stripped_text(path), encoding="utf-8")
            print(f"stripped {path}")
    return 1 if dirty and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
