#!/usr/bin/env bash
# Does the paper's network, trained on a GPU with Keras 3's JAX backend, repeat itself with one seed?
# Two runs as JAX runs by default, two with XLA's deterministic GPU ops, one after another (so no
# run's autotuning is timed beside another's); then `paper_scale compare` says what differs.
# Usage, on a GPU machine where keras and jax import (README "The paper's network at a GPU's scale"):
#   IHC_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_repeat.sh OUT [EPOCHS] [STEPS_PER_EPOCH]
set -euo pipefail
out=${1:?usage: gpu_repeat.sh OUT [EPOCHS] [STEPS_PER_EPOCH]}
epochs=${2:-3}
steps=${3:-100}
python=${PYTHON:-python3}
export KERAS_BACKEND=jax
mkdir -p "$out"
work=$(mktemp -d)
for name in default_a default_b deterministic_a deterministic_b; do
  flags=""
  [[ $name == deterministic_* ]] && flags="--xla_gpu_deterministic_ops=true"
  echo "== $name XLA_FLAGS='$flags'"
  XLA_FLAGS="$flags" "$python" -m ihclib.study.paper_scale train --out "$out/$name" --work "$work/$name" \
    --max-epochs "$epochs" --steps-per-epoch "$steps" --minutes 1000 --seed 0 --commit "${IHC_COMMIT:-unknown}"
done
rm -rf "$work"
"$python" -m ihclib.study.paper_scale compare "$out"/default_a "$out"/default_b "$out"/deterministic_a "$out"/deterministic_b
