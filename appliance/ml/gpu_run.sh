#!/usr/bin/env bash
# The command for the lent GPU machine (no internet, no TensorFlow; its python3 has JAX): install
# the carried wheels, train within the time budget, leave the weights and the log in $OUT.
#
#   here, once:  .venv/bin/python -m appliance.ml.gpu_bundle       (fills build/gpu-bundle)
#   there:       bash appliance/ml/gpu_run.sh --minutes 8 [gpu_train options]
#                (device tool: carry ["build/gpu-bundle"], timeout_s 600)
#   back here:   appliance model import-weights OUT_FOLDER --data ARCHIVE
#
# Environment: OUT (required), GPU_BUNDLE (default build/gpu-bundle), GPU_DATA (default the
# bundle's archive), PYTHON (default python3), GPU_SITE (default /tmp/gpu-site: where the wheels
# go, first on PYTHONPATH so the pinned Keras is the one imported).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:?OUT must name the folder for the results}
bundle=${GPU_BUNDLE:-build/gpu-bundle}
python=${PYTHON:-python3}
site=${GPU_SITE:-/tmp/gpu-site}
if [[ ! -f $bundle/bundle.json ]]; then
  echo "gpu_run: no $bundle/bundle.json: run 'python -m appliance.ml.gpu_bundle' first and" \
    "carry $bundle" >&2
  exit 2
fi
data=${GPU_DATA:-$bundle/$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"])' "$bundle/bundle.json")}

install() {
  "$python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$site" "$@"
}
install "$bundle"/wheels/*.whl
# A pure-Python need of Keras that this python lacks (none, when the machine was last seen).
while read -r module wheel; do
  if ! "$python" -c "import $module" 2>/dev/null; then
    echo "gpu_run: $module missing here: installing $wheel"
    install "$bundle/fallback/$wheel"
  fi
done <"$bundle/fallback/modules.txt"

export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
mkdir -p "$out"
{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
  "$python" -c 'import sys, jax, keras; print("python", sys.version.split()[0], "jax",
    jax.__version__, jax.devices(), "keras", keras.__version__, keras.backend.backend())'
  "$python" -m appliance.ml.gpu_train --data "$data" --out "$out" "$@"
} 2>&1 | tee "$out/train.log"
