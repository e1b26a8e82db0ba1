"""The study in JupyterLab: the project's kernel, and source notebooks that stay clean when saved.

``make lab`` registers the kernel ``KERNEL_NAME`` and starts JupyterLab at the repository root with
``--ContentsManager.pre_save_hook=ihclib.lab.pre_save_hook``: every save of a notebook in the
checkout's ``notebooks/`` (autosave included) writes it without outputs, execution counts and
machine-specific metadata, so Run All + Save leaves the working tree as committed. Executed
copies (``reports/notebooks/``) are saved as they are.

``python -m ihclib.lab strip [--check] [NOTEBOOK ...]`` strips the source notebooks (default: all
of ``notebooks/``); ``--check`` only lists those that are not clean and exits 1 (``make test``).
``python -m ihclib.lab serve [JUPYTER OPTIONS]`` is ``make lab``.
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


def install_kernel(prefix: str | os.PathLike = sys.prefix) -> Path:
    """Register this Python as the kernel ``KERNEL_NAME`` under ``prefix``/share/jupyter/kernels.

    The kernel starts with ``TF_CPP_MIN_LOG_LEVEL=3``: TensorFlow imported in a user's own cell,
    before ``ihclib.study_setup``, then prints no C++ start-up lines either."""
    from ipykernel.kernelspec import install

    return Path(install(prefix=str(prefix), kernel_name=KERNEL_NAME, display_name=KERNEL_DISPLAY_NAME,
                        env={"TF_CPP_MIN_LOG_LEVEL": "3"}))


def lab_arguments(root: Path = ROOT) -> list[str]:
    """``jupyter lab`` options of ``make lab``: open at the repository root, the project's kernel for
    new notebooks, source notebooks stripped on save; ``--allow-root`` when run as root (as in
    many containers), since the server otherwise refuses to start."""
    args = [f"--ServerApp.root_dir={root}",
            f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}",
            "--ContentsManager.pre_save_hook=ihclib.lab.pre_save_hook"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")
    return args


def serve(extra: list[str], kernel_prefix: str | os.PathLike = sys.prefix) -> int:
    """Register the kernel, then run JupyterLab (``make lab``) with ``lab_arguments`` and ``extra``."""
    import subprocess

    install_kernel(kernel_prefix)
    cmd = [sys.executable, "-m", "jupyterlab", *lab_arguments(), *extra]
    try:
        return subprocess.call(cmd, cwd=ROOT)
    except KeyboardInterrupt:  # Ctrl-C stops the server; no traceback
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ihclib.lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    strip = sub.add_parser("strip", help="strip source notebooks of outputs and machine-specific metadata")
    strip.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb of this checkout")
    strip.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is not clean")
    kernel = sub.add_parser("kernel", help=f"register the {KERNEL_DISPLAY_NAME!r} kernel")
    kernel.add_argument("--prefix", default=sys.prefix, help="default: this environment (%(default)s)")
    serve_p = sub.add_parser("serve", help="register the kernel and start JupyterLab at the repository root")
    serve_p.add_argument("--kernel-prefix", default=sys.prefix, help="where the kernel is registered")
    args, extra = parser.parse_known_args(argv)
    if args.command == "serve":
        return serve(extra, args.kernel_prefix)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "kernel":
        print(f"kernel {KERNEL_NAME!r} registered in {install_kernel(args.prefix)}")
        return 0
    return strip_command(args.notebooks or source_notebooks(), args.check)


def strip_command(paths: list[Path], check: bool) -> int:
    """Strip ``paths`` in place, or (``check``) name those that are not clean and return 1."""
    dirty = unclean(paths)
    for path in dirty:
        if check:
            print(f"{path}: has outputs or machine-specific metadata (run `python -m ihclib.lab strip`)",
                  file=sys.stderr)
        else:
            path.write_text(stripped_text(path), encoding="utf-8")
            print(f"stripped {path}")
    return 1 if dirty and check else 0


if __name__ == "__main__":
    sys.exit(main())
