#!/usr/bin/env bash
# Does the paper's network, trained on a GPU with Keras 3's JAX backend, repeat itself with one seed?
# Two runs without XLA's deterministic GPU ops (--no-deterministic: as JAX runs by default), two
# with them (paper_scale's default), one after another (so no run's autotuning is timed beside
# another's); then `paper_scale compare` says what differs. Measured on an H100: reports/gpu_repeat/.
# Usage, on a GPU machine where keras and jax import (README "The paper's network at a GPU's scale"):
#   IHC_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_repeat.sh OUT [EPOCHS] [STEPS_PER_EPOCH]
set -euo pipefail
out=${1:?usage: gpu_repeat.sh OUT [EPOCHS] [STEPS_PER_EPOCH]}
epochs=${2:-3}
steps=${3:-100}
python=${PYTHON:-python3}
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
mkdir -p "$out"
work=$(mktemp -d)
for name in default_a default_b deterministic_a deterministic_b; do
  mode=--deterministic
  [[ $name == default_* ]] && mode=--no-deterministic
  echo "== $name $mode"
  XLA_FLAGS="" "$python" -m ihclib.study.paper_scale train --out "$out/$name" --work "$work/$name" $mode \
    --max-epochs "$epochs" --steps-per-epoch "$steps" --minutes 1000 --seed 0 --commit "${IHC_COMMIT:-unknown}"
done
rm -rf "$work"
"$python" -m ihclib.study.paper_scale compare "$out"/default_a "$out"/default_b "$out"/deterministic_a "$out"/deterministic_b
