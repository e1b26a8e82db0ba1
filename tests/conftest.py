import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `ihclib` commands run as subprocesses keep XLA's compiled code here, not in the user's ~/.cache
_XLA_CACHE = None if "IHCLIB_XLA_CACHE" in os.environ else tempfile.mkdtemp(prefix="ihclib-test-xla-cache-")
if _XLA_CACHE:
    os.environ["IHCLIB_XLA_CACHE"] = _XLA_CACHE


def pytest_sessionfinish(session, exitstatus):
    if _XLA_CACHE:
        shutil.rmtree(_XLA_CACHE, ignore_errors=True)

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
