#!/usr/bin/env bash
# Runs one mixjax command as a multi-process JAX job on a SLURM GPU cluster.
#
#   scripts/launch_slurm.sh --nodes N --gpus-per-node G [options] -- COMMAND...
#
# Outside an allocation it submits itself with sbatch (so the job survives your logout and can
# be requeued); inside one (SLURM_JOB_ID set, or --no-submit) it runs `srun` with one process
# per GPU (--mode per-gpu, default) or one process per node owning all its GPUs (--mode
# per-node). Every process gets MIXJAX_DISTRIBUTED=1, so mixjax calls
# jax.distributed.initialize(), which reads the coordinator, process count and process id
# from SLURM's variables; this script sets only which GPUs each process owns:
#   per-gpu : CUDA_VISIBLE_DEVICES=$SLURM_LOCALID, JAX_LOCAL_DEVICE_IDS=0
#   per-node: JAX_LOCAL_DEVICE_IDS=0,...,G-1  (JAX's SLURM default would be [SLURM_LOCALID]=[0])
# Preemption: the job is submitted with --requeue; COMMAND must resume from its latest
# checkpoint (`mixjax train ... --resume` does; the run dir must be on a filesystem all
# nodes see).
#
# Options:
#   --nodes N            nodes (default 1)
#   --gpus-per-node G    GPUs per node (default 8)
#   --mode per-gpu|per-node
#   --partition P  --account A  --time HH:MM:SS (default 24:00:00)  --job-name NAME (default mixjax)
#   --cpus-per-gpu C     (default 8)
#   --venv DIR           virtualenv to activate on the nodes (default .venv)
#   --no-submit          run srun directly even outside an allocation (e.g. under salloc)
#   --dry-run            print exactly what would run, run nothing
#
# Example (2 nodes x 8 GPUs, GPT-2 124M config; see docs/scaling.md):
#   scripts/launch_slurm.sh --nodes 2 --gpus-per-node 8 --partition gpu -- \
#     mixjax train configs/lm_124m_gpu.py --resume --set train.run_dir=/shared/runs/gpt124m
set -euo pipefail

NODES=1 GPN=8 MODE="per-gpu" PARTITION="" ACCOUNT="" TIME="24:00:00" JOB_NAME="mixjax"
CPG=8 VENV=".venv" NO_SUBMIT=0 DRY_RUN=0 IN_JOB=0

die() { echo "launch_slurm.sh: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] || die "option $1 needs a value"; }
posint() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }

ORIG_ARGS=()  # for the sbatch re-invocation, without --dry-run
_seen_sep=0
for a in "$@"; do
  [ "$a" != -- ] || _seen_sep=1
  [ "$a" = --dry-run ] && [ "$_seen_sep" = 0 ] || ORIG_ARGS+=("$a")
done
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) need "$@"; posint "$1" "$2"; NODES="$2"; shift 2 ;;
    --gpus-per-node) need "$@"; posint "$1" "$2"; GPN="$2"; shift 2 ;;
    --mode) need "$@"; MODE="$2"; shift 2 ;;
    --partition) need "$@"; PARTITION="$2"; shift 2 ;;
    --account) need "$@"; ACCOUNT="$2"; shift 2 ;;
    --time) need "$@"; TIME="$2"; shift 2 ;;
    --job-name) need "$@"; JOB_NAME="$2"; shift 2 ;;
    --cpus-per-gpu) need "$@"; posint "$1" "$2"; CPG="$2"; shift 2 ;;
    --venv) need "$@"; VENV="$2"; shift 2 ;;
    --no-submit) NO_SUBMIT=1; shift ;;
    --in-job) IN_JOB=1; shift ;;   # internal: set by the sbatch re-invocation
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (the command goes after --)" ;;
  esac
done
[ $# -gt 0 ] || die "no command given after --"
case "$MODE" in per-gpu|per-node) ;; *) die "--mode must be per-gpu or per-node, got '$MODE'" ;; esac

cd "$(dirname "$0")/.."
ROOT=$(pwd)

run() {  # prints a command, then runs it unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$DRY_RUN" = 1 ] || "$@"
}

if [ "$MODE" = per-gpu ]; then
  TASKS_PER_NODE=$GPN
  DEVICE_ENV='export CUDA_VISIBLE_DEVICES=$SLURM_LOCALID JAX_LOCAL_DEVICE_IDS=0'
else
  TASKS_PER_NODE=1
  DEVICE_ENV="export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((GPN - 1)))"
fi
ALLOC=(--nodes="$NODES" --ntasks-per-node="$TASKS_PER_NODE" --gpus-per-node="$GPN"
       --cpus-per-task=$((CPG * GPN / TASKS_PER_NODE)))

if [ -z "${SLURM_JOB_ID:-}" ] && [ "$NO_SUBMIT" = 0 ] && [ "$IN_JOB" = 0 ]; then
  # Not in an allocation: submit this script, which reruns itself inside the job.
  SB=(sbatch --job-name="$JOB_NAME" "${ALLOC[@]}" --time="$TIME" --requeue
      --output="$ROOT/logs/slurm-%x-%j.out")
  [ -z "$PARTITION" ] || SB+=(--partition="$PARTITION")
  [ -z "$ACCOUNT" ] || SB+=(--account="$ACCOUNT")
  [ "$DRY_RUN" = 1 ] || mkdir -p logs
  run "${SB[@]}" "$ROOT/scripts/launch_slurm.sh" --in-job "${ORIG_ARGS[@]}"
  exit 0
fi

USER_CMD=$(printf '%q ' "$@")
TASK="cd $(printf %q "$ROOT") && source $(printf %q "$VENV")/bin/activate && $DEVICE_ENV MIXJAX_DISTRIBUTED=1 && exec $USER_CMD"
SR=(srun "${ALLOC[@]}" --kill-on-bad-exit=1 --label)
[ -z "$PARTITION" ] || [ -n "${SLURM_JOB_ID:-}" ] || SR+=(--partition="$PARTITION")
[ -z "$ACCOUNT" ] || [ -n "${SLURM_JOB_ID:-}" ] || SR+=(--account="$ACCOUNT")
run "${SR[@]}" bash -c "$TASK"
