"""ihclib: restoring noisy immunohistochemistry images with convolutional networks.

Modules, one concern each: ``images`` (file I/O), ``data`` (datasets, tiles, splits),
``noise`` (noise models), ``profiles`` (run sizes), ``model`` (the paper's network and
modifications), ``train``, ``metrics``, ``baselines`` (classical filters), ``downstream``
(DAB / nuclei segmentation), ``evaluate``, ``infer`` (tiled denoising), ``reports``, ``cli``.
"""

__version__ = "0.1.0"
