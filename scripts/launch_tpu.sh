#!/usr/bin/env bash
# Runs one mixjax command on every worker of a Cloud TPU VM slice.
#
#   scripts/launch_tpu.sh --name NAME --zone ZONE --accelerator v4-32 [options] -- COMMAND...
#
# Steps (each printed, and with --dry-run only printed):
#   1. create the TPU VM slice unless it exists (`gcloud compute tpus tpu-vm describe/create`);
#   2. put the code on every worker: --code copy (default) ships a `git archive` of HEAD,
#      --code git clones/pulls --repo at --branch;
#   3. install: a venv on each worker with jax[tpu] and mixjax (-e .);
#   4. run COMMAND on all workers at once (`ssh --worker=all`) with MIXJAX_DISTRIBUTED=1, so
#      mixjax calls jax.distributed.initialize() (auto-detected on TPU); the output of all
#      workers is streamed here and tee'd into <log-dir>/<name>.log, each worker also keeps
#      ~/mixjax-logs/run.log;
#   5. preemption-friendly: if COMMAND fails and the slice is PREEMPTED (or gone), delete and
#      recreate it, reinstall and rerun the same COMMAND, up to --max-restarts times. COMMAND
#      must resume from its latest checkpoint (`mixjax train ... --resume`), so its run dir
#      must outlive the VM and be seen by every worker: a gcsfuse mount of a bucket.
#
# Options:
#   --name NAME            TPU VM name (required)
#   --zone ZONE            e.g. us-central2-b (required)
#   --accelerator TYPE     e.g. v4-8, v4-32, v5litepod-16 (required to create)
#   --version V            TPU VM runtime (default tpu-ubuntu2204-base)
#   --project P            gcloud project (default: gcloud's configured project)
#   --spot                 create a spot (preemptible) slice
#   --code copy|git        how code reaches the workers (default copy)
#   --repo URL --branch B  for --code git (default branch main)
#   --jax-version V        jax[tpu] version to install (default 0.10.2)
#   --remote-dir DIR       code directory on the workers (default mixjax)
#   --log-dir DIR          local directory for <name>.log (default logs)
#   --max-restarts N       reruns after a preemption (default 3)
#   --skip-install         reuse the venv already on the workers
#   --dry-run              print every command instead of running it
#
# Example (pod slice, 1B config, checkpoints on GCS; see docs/scaling.md):
#   scripts/launch_tpu.sh --name mix-v4-32 --zone us-central2-b --accelerator v4-32 --spot -- \
#     mixjax train configs/lm_1b_tpu.py --resume --set train.run_dir=/gcs/BUCKET/runs/lm1b
# (/gcs/BUCKET: a gcsfuse mount on every worker; --resume also starts a fresh run)
set -euo pipefail

NAME="" ZONE="" ACCEL="" VERSION="tpu-ubuntu2204-base" PROJECT="" SPOT=0 CODE="copy" REPO=""
LOG_DIR="logs" BRANCH="main" JAX_VERSION="0.10.2" REMOTE_DIR="mixjax" MAX_RESTARTS=3 SKIP_INSTALL=0 DRY_RUN=0

die() { echo "launch_tpu.sh: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] || die "option $1 needs a value"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --name) need "$@"; NAME="$2"; shift 2 ;;
    --zone) need "$@"; ZONE="$2"; shift 2 ;;
    --accelerator) need "$@"; ACCEL="$2"; shift 2 ;;
    --version) need "$@"; VERSION="$2"; shift 2 ;;
    --project) need "$@"; PROJECT="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --code) need "$@"; CODE="$2"; shift 2 ;;
    --repo) need "$@"; REPO="$2"; shift 2 ;;
    --branch) need "$@"; BRANCH="$2"; shift 2 ;;
    --jax-version) need "$@"; JAX_VERSION="$2"; shift 2 ;;
    --remote-dir) need "$@"; REMOTE_DIR="$2"; shift 2 ;;
    --log-dir) need "$@"; LOG_DIR="$2"; shift 2 ;;
    --max-restarts) need "$@"; MAX_RESTARTS="$2"; shift 2 ;;
    --skip-install) SKIP_INSTALL=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (the command goes after --)" ;;
  esac
done
[ -n "$NAME" ] || die "--name is required"
[ -n "$ZONE" ] || die "--zone is required"
[ $# -gt 0 ] || die "no command given after --"
case "$CODE" in copy|git) ;; *) die "--code must be copy or git, got '$CODE'" ;; esac
[ "$CODE" != git ] || [ -n "$REPO" ] || die "--code git needs --repo URL"
[[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || die "--max-restarts must be a non-negative integer, got '$MAX_RESTARTS'"

cd "$(dirname "$0")/.."
GC=(gcloud compute tpus tpu-vm)
LOC=(--zone "$ZONE")
[ -z "$PROJECT" ] || LOC+=(--project "$PROJECT")
# The user's command, quoted once for the remote shell.
USER_CMD=$(printf '%q ' "$@")
VENV='$HOME/mixjax-venv'

run() {  # prints a command, then runs it unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$DRY_RUN" = 1 ] || "$@"
}

tpu_state() {  # READY, PREEMPTED, CREATING, ... or NOT_FOUND
  "${GC[@]}" describe "$NAME" "${LOC[@]}" --format='value(state)' 2>/dev/null || echo NOT_FOUND
}

create_slice() {
  [ -n "$ACCEL" ] || die "slice '$NAME' does not exist and --accelerator is not given"
  local extra=()
  [ "$SPOT" = 0 ] || extra+=(--spot)
  run "${GC[@]}" create "$NAME" "${LOC[@]}" --accelerator-type "$ACCEL" --version "$VERSION" "${extra[@]}"
}

ensure_slice() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "# if '$NAME' does not exist (gcloud compute tpus tpu-vm describe fails):"
    create_slice
    return
  fi
  local state; state=$(tpu_state)
  case "$state" in
    READY) echo "# reusing TPU VM '$NAME' (READY)" ;;
    NOT_FOUND) create_slice ;;
    PREEMPTED|TERMINATED|STOPPED)
      run "${GC[@]}" delete "$NAME" "${LOC[@]}" --quiet
      create_slice ;;
    *) die "TPU VM '$NAME' is in state $state; wait or delete it" ;;
  esac
}

ssh_all() {  # runs a shell snippet on every worker
  run "${GC[@]}" ssh "$NAME" "${LOC[@]}" --worker=all --command "$1"
}

ship_code() {
  if [ "$CODE" = copy ]; then
    local tarball="/tmp/mixjax-$NAME.tar.gz"
    run git archive --format=tar.gz -o "$tarball" HEAD
    run "${GC[@]}" scp "$tarball" "$NAME:/tmp/mixjax.tar.gz" "${LOC[@]}" --worker=all
    ssh_all "mkdir -p $REMOTE_DIR && tar -xzf /tmp/mixjax.tar.gz -C $REMOTE_DIR"
  else
    ssh_all "if [ -d $REMOTE_DIR/.git ]; then git -C $REMOTE_DIR fetch -q origin $BRANCH && git -C $REMOTE_DIR checkout -q FETCH_HEAD; else git clone -q --branch $BRANCH $REPO $REMOTE_DIR; fi"
  fi
}

install() {
  [ "$SKIP_INSTALL" = 0 ] || { echo "# --skip-install: reusing $VENV"; return; }
  ssh_all "python3 -m venv $VENV && $VENV/bin/pip install -q -U pip && $VENV/bin/pip install -q 'jax[tpu]==$JAX_VERSION' -e $REMOTE_DIR"
}

launch() {  # every worker runs the same command; jax.distributed auto-detects the slice
  local remote="cd $REMOTE_DIR && mkdir -p \$HOME/mixjax-logs && export MIXJAX_DISTRIBUTED=1 PATH=$VENV/bin:\$PATH && ( $USER_CMD) 2>&1 | tee -a \$HOME/mixjax-logs/run.log; exit \${PIPESTATUS[0]}"
  printf '+'; printf ' %q' "${GC[@]}" ssh "$NAME" "${LOC[@]}" --worker=all --command "$remote"
  printf ' 2>&1 | tee -a %q\n' "$LOG_DIR/$NAME.log"
  [ "$DRY_RUN" = 1 ] && return 0
  mkdir -p "$LOG_DIR"
  "${GC[@]}" ssh "$NAME" "${LOC[@]}" --worker=all --command "$remote" 2>&1 | tee -a "$LOG_DIR/$NAME.log"
  return "${PIPESTATUS[0]}"
}

attempt=0
while :; do
  ensure_slice
  ship_code
  install
  if launch; then
    echo "# done: $LOG_DIR/$NAME.log"
    exit 0
  fi
  state=$(tpu_state)
  case "$state" in
    PREEMPTED|TERMINATED|STOPPED|NOT_FOUND)
      attempt=$((attempt + 1))
      [ "$attempt" -le "$MAX_RESTARTS" ] || die "slice '$NAME' was preempted $attempt times; giving up"
      echo "# slice '$NAME' is $state: recreating and resuming (restart $attempt of $MAX_RESTARTS)" ;;
    *) die "command failed on '$NAME' (slice state $state, not a preemption); see $LOG_DIR/$NAME.log" ;;
  esac
done
