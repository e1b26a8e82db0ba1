"""ihclib: restoring noisy immunohistochemistry images with convolutional networks.

Three layers (docs/architecture.md): this package is the tool users install (``images``,
``registry``, ``model``, ``infer``, ``backends``, ``slides``, ``distributed``, ``noise``,
``train``, ``determinism``, ``cli``); ``ihclib.study`` is the study (data, profiles, baselines,
metrics, evaluation, figures); ``ihclib.runner`` runs the study's notebooks. The tool never
imports the study, nor the study the runner.
"""

import os

# oneDNN kernels make CPU training and inference faster (`make bench` measures it); TensorFlow
# turns them on by default only where AVX512-VNNI/AMX exist. Set here, before any ihclib module imports
# TensorFlow (effective only if the user has not imported it already); a user's own setting wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
