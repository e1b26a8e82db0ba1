# ihc-denoise: two commands on a fresh machine (Linux, Python 3.11, make).
#   make reproduce [PROFILE=quick]   set up .venv and run the whole study -> reports/ (other profiles: reports/<profile>/)
#   make test                        set up .venv and run pytest + nbval
#   make verify [QUICK=1]            rerun the smoke (and quick) profile, compare every result table with the committed one
# Also: make bench, make bench-slides, make lab, make test-lab, make nbval-refs, make clean.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= quick
DATA    ?=
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup reproduce reproduce-all verify test test-lib test-lab test-notebooks bench bench-slides generalisation bundle lab nbval-refs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[notebooks,dev]'
	@$(PY) -m ihclib.native  # compiles ihclib's C prefix now rather than at the first denoise (never fails)
	@rm -f $(VENV)/.installed-*
	@touch $@

# quick writes reports/; any other profile reports/<profile>/ (kept when quick runs again)
REPORTS = $(if $(filter quick,$(PROFILE)),reports,reports/$(PROFILE))

# reports come from a clean commit; ALLOW_DIRTY=1 writes them anyway (the manifest says so)
reproduce: setup
	$(PY) -m ihclib.runner.pipeline --profile $(PROFILE) --reports $(REPORTS) $(if $(DATA),--data-dir $(DATA)) $(if $(ALLOW_DIRTY),--allow-dirty)

# every committed report: quick (reports/), long and paper (about 55 minutes on 2 CPU cores)
reproduce-all: setup
	$(MAKE) reproduce PROFILE=quick
	$(MAKE) reproduce PROFILE=long
	$(MAKE) reproduce PROFILE=paper

# Reruns the smoke profile (QUICK=1: also quick, about 20 minutes on 2 cores) into a temporary
# folder and compares every result table with the committed one (reports/smoke/, reports/):
# byte-identical on the CPU that made them, within the manifest's tolerances on another.
verify: setup
	$(PY) -m ihclib.runner.verify --profile smoke $(if $(QUICK),--profile quick)

# The notebooks run under nbval against stored smoke-profile outputs (tests/notebooks/);
# IHC_RUNS_DIR gives them a fresh place for the models they train.
test: setup
	$(PY) -m ihclib.runner.lab strip --check
	$(PY) -m pytest tests
	IHC_RUNS_DIR=$$(mktemp -d) $(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider tests/notebooks
	$(PY) -m ihclib.runner.verify --profile smoke

test-lib: setup
	$(PY) -m pytest tests

# speed against this machine's peak -> reports/benchmarks.json and the README's performance table
# (a few minutes on a quiet 2-core machine; fails when any share of a peak is above 100 %)
bench: setup
	$(PY) benchmarks/bench.py

# issue 14's whole-slide benchmark: a synthetic 40,000 px pyramidal TIFF from data/ denoised on a
# local Dask cluster (peak memory, pyramid, PSNR against the in-memory path, 2 workers against 1
# process) -> reports/slides_benchmark.json; SLIDE_SIZE=10000 for a shorter run
SLIDE_SIZE ?= 40000
bench-slides: setup
	$(PY) benchmarks/slides.py --size $(SLIDE_SIZE)

# issue 10's re-scoring of the bundled model on every source (two tiles per image)
generalisation: setup
	$(PY) benchmarks/generalisation.py

# the bundled default model: crosschannel_unet with 32 / 32 / 64 channels on every source
# (profile bundle; 9.4 minutes on a 2-core Zen 5); then copy runs/bundle/crosschannel_unet/crosschannel_unet.{keras,json} to
# ihclib/models/default.{keras,json} to ship it
bundle: setup
	$(PY) -m ihclib.cli train --profile bundle --model crosschannel_unet --out-dir runs/bundle

# JupyterLab at the repository root with the "Python (ihc-denoise)" kernel registered and
# preselected; source notebooks are stripped of outputs on save; --allow-root added when run as
# root. More jupyter options: make lab LAB_ARGS="--no-browser --port 8890"
LAB_ARGS ?=
lab: setup
	$(PY) -m ihclib.runner.lab serve $(LAB_ARGS)

# the study in a real JupyterLab in headless Chromium (needs chromium and chromium-driver):
# Run All + Save of each notebook under the smoke profile; screenshots in build/lab-browser/
test-lab: setup
	IHC_LAB_BROWSER=1 $(PY) -m pytest -p no:cacheprovider tests/test_lab_browser.py

# Regenerate the stored outputs nbval compares against (after changing a notebook).
nbval-refs: setup
	$(PY) -m ihclib.runner.pipeline --profile smoke --nbval-refs tests/notebooks

clean:
	rm -rf runs .pytest_cache
