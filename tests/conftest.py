import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `ihclib` commands run as subprocesses keep XLA's compiled code here, not in the user's ~/.cache
os.environ.setdefault("IHCLIB_XLA_CACHE", tempfile.mkdtemp(prefix="ihclib-test-xla-cache-"))

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
