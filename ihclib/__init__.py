"""ihclib: restoring noisy immunohistochemistry images with convolutional networks.

Modules, one concern each: ``images`` (file I/O), ``data`` (datasets, tiles, splits),
``noise`` (noise models), ``profiles`` (run sizes), ``model`` (the paper's network and
modifications), ``train``, ``metrics``, ``baselines`` (classical filters), ``downstream``
(DAB / nuclei segmentation), ``evaluate``, ``infer`` (tiled denoising), ``reports``, ``cli``.
"""

import os

# oneDNN kernels make CPU training 1.5-4x faster on AVX2 CPUs; TensorFlow turns them on by
# default only where AVX512-VNNI/AMX exist. Set here, before any ihclib module imports
# TensorFlow (effective only if the user has not imported it already); a user's own setting wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
