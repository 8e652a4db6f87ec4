#!/usr/bin/env bash
# One lease of a GPU machine: the GPU benchmarks in one prepared run of at most 9 minutes.
#
#   bash benchmarks/gpu_session.sh OUT_DIR          # on the GPU machine (<= 9 min on one H100/H200)
#   MIXJAX_GPU_SESSION_CHECK=1 bash benchmarks/gpu_session.sh /tmp/out   # CPU dry run, tiny sizes
#
# 1. benchmarks/bench_host.py (when present): the loop's host cost per step with a null step;
# 2. benchmarks/bench_gpu_mfu.py: 124M config at 64 x 1024 tokens per step: plain / DoReMi /
#    DoGE(vmap) / DGA(jvp) tokens/s and MFU, and on the plain step the A/B of the attention
#    kernel (cuDNN flash vs xla) and of the loss (chunked vs full logits), after a cuDNN-vs-xla
#    attention check;
# 3. benchmarks/bench_loop.py: loop vs bare jitted step (the loop's overhead is the device's idle
#    time per step: idle = 1 - bare/loop), quickstart and 10M models, static and online mixers,
#    lag 1/2;
# 4. benchmarks/bench_swarm.py: proxies x steps / s at P = 128 and 512, vmap vs map.
# Each part has its own time limit (they sum to under 9 min with the set-up) so one slow or failing
# part cannot take the others' numbers with it; everything is logged to OUT_DIR with the device
# name, jax version and commit.
#
# Python packages a bare jax GPU image may lack travel as wheels in .whl/ (git-ignored; carried
# to the machine), for Python 3.12, pinned to the versions the tests run with:
#   python -m pip download --python-version 3.12 --only-binary=:all: --no-deps -d .whl \
#     grain==0.2.18 array-record==0.8.6 tensorboardX==2.6.5 portpicker==1.6.0 \
#     cloudpickle==3.1.3 etils==1.15.0 absl-py==2.5.1 psutil==7.2.2 protobuf==7.36.2 fsspec zipp
# (grain's Requires-Dist: absl-py, array-record, cloudpickle, etils[epath,epy], numpy, portpicker,
# protobuf; etils[epath]: fsspec, typing_extensions, zipp; portpicker: psutil.) Only the wheels
# whose distribution the image does not already have are installed, into /tmp/site, so the
# image's own jax/flax/orbax stack is left as it is.
set -u
OUT_DIR=${1:?usage: gpu_session.sh OUT_DIR}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
check=${MIXJAX_GPU_SESSION_CHECK:-0}
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD
if [ "$check" != 1 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  missing=()
  for whl in .whl/*.whl; do
    dist=$(basename "$whl" | cut -d- -f1)
    $PY -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null \
      || missing+=("$whl")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing into /tmp/site: ${missing[*]}"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target /tmp/site "${missing[@]}" || exit 1
    export PYTHONPATH=$PWD:/tmp/site
  fi
fi

{
  date -u; git rev-parse HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  $PY -c "import jax, flax, optax, orbax.checkpoint as o, grain; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'grain', grain.__version__ if hasattr(grain, '__version__') else '?'); print(jax.devices())"
} 2>&1 | tee "$OUT_DIR/env.txt"

run() {   # run NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.txt"
  echo "=== $name rc=${PIPESTATUS[0]} wall=$(( $(date +%s) - t0 ))s"
}

if [ "$check" = 1 ]; then
  if [ -f benchmarks/bench_host.py ]; then
    run host 300 $PY benchmarks/bench_host.py --steps 20 --warmup 5 --mixers uniform --shapes 16x128
  fi
  run mfu 900 $PY benchmarks/bench_gpu_mfu.py --tiny --steps 2
  run loop 600 $PY benchmarks/bench_loop.py --models tiny --mixers uniform --lags 1 --steps 12 --warmup 4 --reps 1 --prefetch both
  run swarm 600 $PY benchmarks/bench_swarm.py --proxies 1,2 --steps 2 --skip-separate
else
  if [ -f benchmarks/bench_host.py ]; then
    run host 60 $PY benchmarks/bench_host.py --steps 500 --mixers uniform,odm --prefetch both
  fi
  run mfu 210 $PY benchmarks/bench_gpu_mfu.py --batch-size 64 --grad-accum 1 --steps 10
  run loop 150 $PY benchmarks/bench_loop.py --models tiny,10m --mixers uniform,odm --lags 1 --steps 40 --warmup 10 --reps 1 --prefetch both
  run swarm 130 $PY benchmarks/bench_swarm.py --proxies 128,512 --steps 10 --skip-separate
fi
