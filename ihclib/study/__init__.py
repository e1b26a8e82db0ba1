"""The study: data, noise sweeps, classical baselines, metrics, evaluation, figures and the
profiles that size a run. Imports the tool (ihclib); the tool never imports it."""

# the data_dir value that asks for scikit-image's embedded IHC image (the smoke set and fallback),
# named here once for data, profiles and the notebooks' setup, none of which the others import
EMBEDDED = "skimage"
