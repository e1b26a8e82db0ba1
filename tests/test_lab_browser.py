"""The study as a user opens it: a real JupyterLab in headless Chromium (issue 15).

For each notebook: open it, check that the project's kernel was preselected, Run All under the
smoke profile, count error outputs and stderr blocks (both must be 0), Save, and check that
``git status`` is what it was. Screenshots go to ``build/lab-browser/`` (or $IHC_LAB_ARTIFACTS).

Heavy (about 3 minutes): it runs only with IHC_LAB_BROWSER=1 (``make test-lab``) and where
Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package are installed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ihclib.runner.lab import KERNEL_DISPLAY_NAME, KERNEL_NAME

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
RUN_TIMEOUT_S = 900  # one notebook's Run All under smoke takes 10-60 s on 2 shared CPU cores

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(os.environ.get("IHC_LAB_BROWSER") != "1", reason="heavy: run with `make test-lab`"),
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromium-driver"),
]

# The notebook panel JupyterLab shows (window.jupyterapp: --expose-app-in-browser), read through
# its model: outputs are counted whether or not their cell is scrolled into view.
STATE_JS = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!w || !w.sessionContext || !w.context || !w.context.isReady) return null;
const cells = w.content.widgets.filter(c => c.model.type === 'code');
const outputs = cells.flatMap(c => c.model.outputs.toJSON());
return {
  path: w.context.path,
  kernel: w.sessionContext.session && w.sessionContext.session.kernel
          ? w.sessionContext.session.kernel.name : null,
  display: w.sessionContext.kernelDisplayName,
  status: w.sessionContext.kernelDisplayStatus,
  dirty: w.context.model.dirty,
  code_cells: cells.length,
  executed: cells.filter(c => c.model.executionCount !== null).length,
  errors: outputs.filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue),
  stderr: outputs.filter(o => o.output_type === 'stream' && o.name === 'stderr').map(o => o.text),
  stderr_shown: document.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').length,
};
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``make lab``'s server (``python -m ihclib.runner.lab serve``), isolated from the user's Jupyter
    settings, its kernel registered in a temporary prefix; the profile is smoke ($IHC_PROFILE)."""
    tmp = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "IHC_PROFILE": "smoke", "IHC_RUNS_DIR": str(tmp / "runs"),
           "JUPYTER_PATH": str(tmp / "prefix" / "share" / "jupyter"), "JUPYTER_CONFIG_DIR": str(tmp / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
           "PYTHONPATH": str(ROOT)}
    news = tmp / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "get notified about Jupyter news?" toast in the screenshots
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as in a user's shell (the project's kernelspec sets it)
    log = open(tmp / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "ihclib.runner.lab", "serve", "--kernel-prefix", str(tmp / "prefix"), "--no-browser",
         f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         "--expose-app-in-browser"], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (tmp / "server.log").read_text()
                time.sleep(0.5)
        else:
            raise AssertionError(f"JupyterLab did not answer in 60 s:\n{(tmp / 'server.log').read_text()}")
        yield base, token
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def _wait(driver, predicate, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = driver.execute_script(STATE_JS)
        if state and predicate(state):
            return state
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; last state: {state}")


def _screenshot(driver, name: str) -> None:
    out = Path(os.environ.get("IHC_LAB_ARTIFACTS") or ROOT / "build" / "lab-browser")
    out.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out / f"{name}.png"))


def test_lab_opens_at_repository_root(lab):
    """`make lab`'s server: the file browser starts at the root (reports/notebooks/ reachable) and
    new notebooks get the project's kernel."""
    import json

    base, token = lab
    root = json.load(urllib.request.urlopen(f"{base}/api/contents?token={token}"))
    assert {"notebooks", "reports", "ihclib"} <= {item["name"] for item in root["content"]}
    specs = json.load(urllib.request.urlopen(f"{base}/api/kernelspecs?token={token}"))
    assert specs["default"] == KERNEL_NAME
    assert specs["kernelspecs"][KERNEL_NAME]["spec"]["display_name"] == KERNEL_DISPLAY_NAME


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_run_all_and_save(lab, browser, path):
    base, token = lab
    rel = path.relative_to(ROOT).as_posix()
    before = _git_status()
    browser.get(f"{base}/lab/tree/{rel}?reset&token={token}")
    state = _wait(browser, lambda s: s["path"] == rel and s["status"] == "idle", 120, "the kernel")
    assert (state["kernel"], state["display"]) == (KERNEL_NAME, KERNEL_DISPLAY_NAME), "project kernel not preselected"

    start = time.monotonic()
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    state = _wait(browser, lambda s: s["errors"] or (s["executed"] == s["code_cells"] and s["status"] == "idle"),
                  RUN_TIMEOUT_S, "Run All")
    print(f"{path.name}: Run All {time.monotonic() - start:.0f} s")
    browser.execute_script("""const n = document.querySelector('.jp-RenderedImage');
                              if (n) n.scrollIntoView({block: 'center'});""")
    time.sleep(1)
    _screenshot(browser, path.stem)
    assert state["errors"] == [] and state["stderr"] == [] and state["stderr_shown"] == 0, state

    browser.execute_script("window.jupyterapp.commands.execute('docmanager:save');")
    _wait(browser, lambda s: not s["dirty"], 60, "the save")
    time.sleep(1)  # autosave or a late write would show here
    assert _git_status() == before, "Run All + Save changed the working tree"
    # free the kernel's memory (TensorFlow) before the next notebook
    browser.execute_script("const w = window.jupyterapp.shell.currentWidget;"
                           "w.sessionContext.shutdown().then(() => w.close());")
