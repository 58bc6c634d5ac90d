#!/usr/bin/env bash
# camserve GPU proof through Keras-on-JAX (see bench/gpu/README.md).
#   bench/gpu/run.sh            on a lent GPU machine: results under $OUT (JSON + summary.md + logs)
#   bench/gpu/run.sh --cpu      the same end to end on CPU with tiny settings (a check that it works)
# Carried wheels in .whl/ (keras, namex, optree, grpcio, grpcio-health-checking, grpcio-reflection, simplejpeg,
# protobuf) are installed into a temporary folder first; nothing is downloaded.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/bench/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  SITE=${CAMSERVE_SITE:-/tmp/camserve-site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "run.sh: installing the carried wheels failed" >&2; exit 2; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT/server:$ROOT/client:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# The engine part and the server's worker are separate processes on one GPU: grow memory on demand
# instead of each pre-allocating 75% of it.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# One compilation cache for the engine part and the server's worker: the worker's warm-up compiles
# the same ResNet50 step shapes the engine part compiled (weights are jit arguments, not constants).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/camserve-jax-cache}
if [[ " $* " == *" --cpu "* ]]; then export JAX_PLATFORMS=cpu; fi
{ command -v nvidia-smi >/dev/null && nvidia-smi -L; "$PY" -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"; } 2>&1 | tee "$OUT/env.txt"
rc=0
"$PY" -m bench.gpu engine --out "$OUT" "$@" 2>&1 | tee "$OUT/engine.log" || rc=1
"$PY" -m bench.gpu serve --out "$OUT" "$@" 2>&1 | tee "$OUT/serve.log" || rc=1
"$PY" -m bench.gpu report --out "$OUT" || rc=1
exit $rc
