"""The study: data, noise sweeps, classical baselines, metrics, evaluation, figures and the
profiles that size a run. Imports the tool (ihclib); the tool never imports it."""
