import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA's compiled code and OpenVINO's converted models (of the tests and of `ihclib` commands run
# as subprocesses) are kept here, not in the user's ~/.cache
_CACHES = {}
for _var, _prefix in (("IHCLIB_XLA_CACHE", "ihclib-test-xla-cache-"), ("IHCLIB_OPENVINO_CACHE", "ihclib-test-ov-cache-")):
    if _var not in os.environ:
        _CACHES[_var] = os.environ[_var] = tempfile.mkdtemp(prefix=_prefix)


def pytest_sessionfinish(session, exitstatus):
    for folder in _CACHES.values():
        shutil.rmtree(folder, ignore_errors=True)

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def ihc_crop() -> np.ndarray:
    """A 96x96 crop of the embedded real IHC image (float32 RGB)."""
    from ihclib.study.data import default_image

    return default_image()[200:296, 150:246].copy()
