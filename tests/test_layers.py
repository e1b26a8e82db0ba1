"""The package's layers: the tool users install never loads the study or its heavy stack."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import ihclib
from ihclib.images import save_image

HEAVY = ("pandas", "matplotlib", "papermill", "nbformat")


def test_denoise_command_loads_no_study_stack(tmp_path):
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    save_image(src, np.random.default_rng(0).random((40, 40, 3)).astype(np.float32))
    probe = ("import json, sys\n"
             "from ihclib.cli import main\n"
             f"rc = main(['denoise', {str(src)!r}, '-o', {str(out)!r}])\n"
             "print(json.dumps({'rc': rc, 'loaded': sorted(m for m in sys.modules if sys.modules[m] is not None)}))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0 and out.is_file()
    loaded = set(result["loaded"])
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    # nothing of the study but the registration of its subcommands, nothing of the runner
    upper = sorted(m for m in loaded if m.startswith(("ihclib.study", "ihclib.runner"))
                   and m not in ("ihclib.study", "ihclib.study.commands") and not m.startswith("ihclib.study.commands."))
    assert not upper, upper
    # and the modules hidden from Keras import normally afterwards
    assert "keras" in loaded


PACKAGE = Path(ihclib.__file__).resolve().parent
UPPER_LAYERS = ("ihclib.study", "ihclib.runner")


def _imports(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a file of the package, relative ones resolved."""
    module = module or ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names] + [(node.lineno, base)]
    return found


def tool_modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in ("study", "runner")]


def test_tool_modules_never_import_the_study_or_the_runner():
    assert len(tool_modules()) >= 10  # the walk found the tool
    bad = [f"{p.relative_to(PACKAGE)}:{line} imports {name}" for p in tool_modules()
           for line, name in _imports(p) if name.startswith(UPPER_LAYERS)]
    assert not bad, "\n".join(bad)


def test_the_study_never_imports_the_runner():
    study = list((PACKAGE / "study").rglob("*.py"))
    assert study
    bad = [f"{p.relative_to(PACKAGE)}:{line} imports {name}" for p in study
           for line, name in _imports(p) if name.startswith("ihclib.runner")]
    assert not bad, "\n".join(bad)


def test_import_check_sees_relative_imports(tmp_path):
    # the checker itself: a relative import into the study from a tool module is caught
    fake = tmp_path / "probe.py"
    fake.write_text("from .study import data\nfrom . import images\nimport ihclib.runner.pipeline\n")
    names = [n for _, n in _imports(fake, "ihclib.probe")]
    assert {"ihclib.study.data", "ihclib.images", "ihclib.runner.pipeline"} <= set(names)
