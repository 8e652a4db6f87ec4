"""scripts/launch_tpu.sh and scripts/launch_slurm.sh: --dry-run prints, and runs nothing.

The cluster tools (gcloud, sbatch, srun, git) are replaced by fakes on PATH that record every
call, so the tests also check the real (non-dry-run) control flow: slice reuse, and
delete/recreate/rerun after a preemption.
"""

import os
import pathlib
import shlex
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / "scripts" / "launch_tpu.sh"
SLURM = ROOT / "scripts" / "launch_slurm.sh"

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Fake gcloud: records calls; the slice state lives in $FAKE_DIR/state.
echo "gcloud $*" >> "$FAKE_DIR/calls"
state_file="$FAKE_DIR/state"
case " $* " in
  *" describe "*) [ -f "$state_file" ] && cat "$state_file" || exit 1 ;;
  *" create "*) echo READY > "$state_file" ;;
  *" delete "*) rm -f "$state_file" ;;
  *"MIXJAX_DISTRIBUTED=1"*)
    echo "worker output line"
    if [ -f "$FAKE_DIR/preempt_once" ]; then
      rm "$FAKE_DIR/preempt_once"; echo PREEMPTED > "$state_file"; exit 1
    fi
    [ ! -f "$FAKE_DIR/fail_always" ] || exit 3 ;;
esac
exit 0
"""
FAKE_RECORDER = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$FAKE_DIR/calls"
"""


@pytest.fixture
def fake_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    for tool in ("sbatch", "srun", "git"):
        (bin_dir / tool).write_text(FAKE_RECORDER)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_DIR=str(tmp_path))
    env.pop("SLURM_JOB_ID", None)
    return tmp_path, env


def _run(script, args, env, check=True):
    args = [str(pathlib.Path(env["FAKE_DIR"]) / "logs") if a == "LOGDIR" else a for a in args]
    proc = subprocess.run([str(script), *args], env=env, capture_output=True, text=True,
                          timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _calls(tmp):
    f = tmp / "calls"
    return f.read_text().splitlines() if f.exists() else []


def _printed(stdout):
    """The commands a script printed ('+ cmd ...'), split back into argv lists."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


TPU_ARGS = ["--name", "mix-v4", "--log-dir", "LOGDIR", "--zone", "us-central2-b", "--accelerator", "v4-32", "--spot"]
USER_CMD = ["mixjax", "train", "configs/lm_1b_tpu.py", "--resume", "--set",
            "train.run_dir=/gcs/b/run x"]


def test_tpu_dry_run_prints_every_step_and_calls_nothing(fake_path):
    tmp, env = fake_path
    proc = _run(TPU, [*TPU_ARGS, "--dry-run", "--", *USER_CMD], env)
    assert _calls(tmp) == []                      # nothing executed, not even describe
    cmds = _printed(proc.stdout)
    create = cmds[0]
    assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
    assert create[5] == "mix-v4" and "--spot" in create
    assert create[create.index("--accelerator-type") + 1] == "v4-32"
    assert cmds[1][:2] == ["git", "archive"]
    assert cmds[2][4] == "scp" and "--worker=all" in cmds[2]
    install = cmds[4][cmds[4].index("--command") + 1]
    assert "jax[tpu]==0.10.2" in install and "-e mixjax" in install
    launch = cmds[5]
    assert launch[4] == "ssh" and "--worker=all" in launch
    remote = launch[launch.index("--command") + 1]
    assert "MIXJAX_DISTRIBUTED=1" in remote
    # The user's command survives quoting exactly, including the argument with a space.
    inner = remote[remote.index("( ") + 2: remote.index(")")]
    assert shlex.split(inner) == USER_CMD
    assert proc.stdout.rstrip().endswith(f"# done: {tmp}/logs/mix-v4.log")


def test_tpu_reuses_ready_slice(fake_path):
    tmp, env = fake_path
    (tmp / "state").write_text("READY\n")
    proc = _run(TPU, [*TPU_ARGS, "--skip-install", "--", "echo", "hi"], env)
    calls = _calls(tmp)
    assert not any(" create " in c for c in calls)
    assert sum("--worker=all" in c and "MIXJAX_DISTRIBUTED=1" in c for c in calls) == 1
    assert "worker output line" in proc.stdout
    assert "worker output line" in (tmp / "logs" / "mix-v4.log").read_text()


def test_tpu_recreates_and_reruns_after_preemption(fake_path):
    tmp, env = fake_path
    (tmp / "state").write_text("READY\n")
    (tmp / "preempt_once").write_text("")
    _run(TPU, [*TPU_ARGS, "--name", "mix-pre", "--", "echo", "hi"], env)
    calls = _calls(tmp)
    runs = [i for i, c in enumerate(calls) if "MIXJAX_DISTRIBUTED=1" in c]
    assert len(runs) == 2                          # the command ran again after preemption
    between = calls[runs[0]:runs[1]]
    assert any(" delete mix-pre" in c for c in between)
    assert any(" create mix-pre" in c for c in between)
    assert any(" scp " in c for c in between)     # code shipped to the new slice


def test_tpu_real_failure_is_not_retried(fake_path):
    tmp, env = fake_path
    (tmp / "state").write_text("READY\n")
    (tmp / "fail_always").write_text("")
    proc = _run(TPU, [*TPU_ARGS, "--name", "mix-fail", "--skip-install", "--", "false"], env,
                check=False)
    assert proc.returncode != 0
    assert "not a preemption" in proc.stderr
    assert sum("MIXJAX_DISTRIBUTED=1" in c for c in _calls(tmp)) == 1


@pytest.mark.parametrize("args, message", [
    (["--zone", "z", "--", "x"], "--name is required"),
    (["--name", "n", "--zone", "z"], "no command"),
    (["--name", "n", "--zone", "z", "--code", "rsync", "--", "x"], "--code must be"),
    (["--name", "n", "--zone", "z", "--bogus", "--", "x"], "unknown option '--bogus'"),
])
def test_tpu_bad_arguments_name_the_culprit(fake_path, args, message):
    tmp, env = fake_path
    proc = _run(TPU, [*args, "--dry-run"], env, check=False)
    assert proc.returncode == 2 and message in proc.stderr
    assert _calls(tmp) == []


def test_slurm_dry_run_outside_allocation_prints_sbatch(fake_path):
    tmp, env = fake_path
    proc = _run(SLURM, ["--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu",
                        "--dry-run", "--", *USER_CMD], env)
    assert _calls(tmp) == []
    (cmd,) = _printed(proc.stdout)
    assert cmd[0] == "sbatch"
    for flag in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--requeue",
                 "--partition=gpu"):
        assert flag in cmd
    script = cmd.index(str(SLURM))
    # The job reruns this script inside the allocation with the same arguments, minus --dry-run.
    assert cmd[script + 1:] == ["--in-job", "--nodes", "2", "--gpus-per-node", "8",
                                "--partition", "gpu", "--", *USER_CMD]


@pytest.mark.parametrize("mode, tasks, device_env", [
    ("per-gpu", "8", "CUDA_VISIBLE_DEVICES=$SLURM_LOCALID JAX_LOCAL_DEVICE_IDS=0"),
    ("per-node", "1", "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7"),
])
def test_slurm_dry_run_inside_allocation_prints_srun(fake_path, mode, tasks, device_env):
    tmp, env = fake_path
    env = dict(env, SLURM_JOB_ID="123")
    proc = _run(SLURM, ["--nodes", "2", "--mode", mode, "--dry-run", "--", *USER_CMD], env)
    assert _calls(tmp) == []
    (cmd,) = _printed(proc.stdout)
    assert cmd[0] == "srun" and f"--ntasks-per-node={tasks}" in cmd and "--nodes=2" in cmd
    assert cmd[-3:-1] == ["bash", "-c"]
    task = cmd[-1]
    assert f"export {device_env} MIXJAX_DISTRIBUTED=1" in task
    assert shlex.split(task[task.index("exec ") + 5:]) == USER_CMD


def test_slurm_runs_srun_for_real_inside_allocation(fake_path):
    tmp, env = fake_path
    env = dict(env, SLURM_JOB_ID="123")
    _run(SLURM, ["--nodes", "1", "--gpus-per-node", "2", "--", "echo", "hi"], env)
    (call,) = _calls(tmp)
    assert call.startswith("srun --nodes=1 --ntasks-per-node=2 --gpus-per-node=2")


def test_slurm_bad_mode_is_rejected(fake_path):
    tmp, env = fake_path
    proc = _run(SLURM, ["--mode", "per-rack", "--dry-run", "--", "x"], env, check=False)
    assert proc.returncode == 2 and "--mode must be per-gpu or per-node" in proc.stderr


def test_tpu_git_mode_clones_or_pulls_on_every_worker(fake_path):
    tmp, env = fake_path
    proc = _run(TPU, [*TPU_ARGS, "--code", "git", "--repo", "https://example.org/mixjax.git",
                      "--branch", "dev", "--skip-install", "--dry-run", "--", "echo", "hi"], env)
    assert _calls(tmp) == []
    cmds = _printed(proc.stdout)
    assert not any(c[0] == "git" for c in cmds)          # no local archive in git mode
    fetch = next(c for c in cmds if "--command" in c and "clone" in c[c.index("--command") + 1])
    remote = fetch[fetch.index("--command") + 1]
    assert "--worker=all" in fetch
    assert "git clone -q --branch dev https://example.org/mixjax.git mixjax" in remote
    assert "fetch -q origin dev" in remote
    assert "# --skip-install" in proc.stdout
