#!/usr/bin/env bash
# One lease of a GPU machine: the three GPU benchmarks in one prepared run.
#
#   bash benchmarks/gpu_session.sh OUT_DIR          # on the GPU machine (~8 min on one H100/H200)
#   MIXJAX_GPU_SESSION_CHECK=1 bash benchmarks/gpu_session.sh /tmp/out   # CPU dry run, tiny sizes
#
# 1. benchmarks/bench_gpu_mfu.py: 124M config, plain / DoReMi / DoGE(vmap) / DGA(jvp), tokens/s, MFU;
# 2. benchmarks/bench_loop.py: loop vs bare jitted step (the loop's overhead is the device's idle
#    time per step: idle = 1 - bare/loop), quickstart and 10M models, static and online mixers, lag 1/2;
# 3. benchmarks/bench_swarm.py: proxies x steps / s for P up to 512, vmap vs map, memory estimate vs XLA.
# Each benchmark has its own time limit so one slow part cannot take the others' numbers with it;
# everything is logged to OUT_DIR with the device name, jax version and commit.
# Python packages the GPU image lacks (grain, array-record, tensorboardX, portpicker) travel as
# wheels in .whl/ (pip download --python-version 3.12 --only-binary=:all: -d .whl NAME==VERSION).
set -u
OUT_DIR=${1:?usage: gpu_session.sh OUT_DIR}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
check=${MIXJAX_GPU_SESSION_CHECK:-0}
if [ "$check" != 1 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
PY=${PYTHON:-python3}

{
  date -u; git rev-parse HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  $PY -c "import jax, flax, optax, orbax.checkpoint as o, grain; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'grain', grain.__version__ if hasattr(grain, '__version__') else '?'); print(jax.devices())"
} 2>&1 | tee "$OUT_DIR/env.txt"

run() {   # run NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.txt"
  echo "=== $name rc=${PIPESTATUS[0]} wall=$(( $(date +%s) - t0 ))s"
}

if [ "$check" = 1 ]; then
  run mfu 600 $PY benchmarks/bench_gpu_mfu.py --tiny --steps 2 --variants plain,doge-vmap
  run loop 600 $PY benchmarks/bench_loop.py --models tiny --mixers uniform --lags 1 --steps 12 --warmup 4 --reps 1
  run swarm 600 $PY benchmarks/bench_swarm.py --proxies 1,2 --steps 2 --skip-separate
else
  run mfu 200 $PY benchmarks/bench_gpu_mfu.py --steps 20
  run swarm 170 $PY benchmarks/bench_swarm.py --proxies 1,8,32,128,512 --steps 10 --skip-separate
  run loop 150 $PY benchmarks/bench_loop.py --models tiny,10m --mixers uniform,odm --lags 1,2 --steps 40 --warmup 10 --reps 2
fi
