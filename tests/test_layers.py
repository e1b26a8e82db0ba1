"""The package's layers: the tool users install never loads the study or its heavy stack."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

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
    # and the modules hidden from Keras import normally afterwards
    assert "keras" in loaded
